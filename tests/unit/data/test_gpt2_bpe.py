"""--tokenizer-type GPT2BPETokenizer (--vocab-file/--merge-file) and Megatron-LM's preprocessing
flags --partitions, --split-sentences, --keep-newlines: Megatron-LM byte identity, errors, export.

The reference encoder below re-implements Megatron-LM's GPT-2 tokenizer (core_v0.16.1,
megatron/training/tokenizer/gpt2_tokenization.py: regex pre-tokenization, bytes_to_unicode, the
classic BPE loop over the merges' ranks, merges.txt read as `split('\\n')[1:-1]`) in plain
Python. Megatron-LM's default path (megatron.core.tokenizers: a transformers GPT-2 tokenizer)
gives the same ids except that it matches `<|endoftext|>` in the text as that token; the legacy
path (--legacy-tokenizer) spells it out. Both are checked here, the default one also against
transformers' own GPT2Tokenizer. The tests build their own vocab.json/merges.txt (a byte-level
BPE trained on the spot); nothing is downloaded.
"""
from __future__ import annotations

import functools
import json
import os
import random
import shutil
import sys

import numpy as np
import pytest
import regex

from megatron_patch.cli import preprocess_data
from megatron_patch.data import encode as encode_module
from megatron_patch.data import load_tokenizer
from megatron_patch.data import preprocess as preprocess_module
from megatron_patch.data.tokenizer import GPT2BPEFiles, GPT2BPETokenizer
from tests._data_helpers import synthetic_documents
from tests.unit.data.test_tokenizer_types import _reference, _same

EOT = "<|endoftext|>"

# Text that exercises the pre-tokenization: contractions, whitespace runs and kinds, digits,
# punctuation, accents, CJK, emoji, control characters, the end-of-text token itself.
TRICKY = [
    "", " ", "  ", "\n", "\n\n\n", "a\tb\t\tc", "trailing   ", "   leading", "x \n y  \n\n z",
    "it's they're we've I'm you'll he'd IT'S don't '", "1234567 3.14 1e-9 ²½ ٣ ⅷ",
    "Ünïcödé façade naïve — “quotes” ‘single’ … 漢字 かな 한국어 🙂👍🏽",
    "\u00a0nbsp\u2028line\u2029para\u200bzw\ufeffbom\u3000ideo\x85nel\x1cfs\x0bvt\x0cff",
    "def f(x):\r\n    return x ** 2  # comment\r\n",
    f"before{EOT}after", f"{EOT}", f" {EOT} ", f"a {EOT}b{EOT}{EOT} c", "<|endoftext|",
    "<|endoftext|>>", "<<|endoftext|>",
]


def _bytes_to_unicode() -> dict[int, str]:
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


class ReferenceGPT2:
    """Megatron-LM's gpt2_tokenization.GPT2Tokenizer.encode; `match_eot`: the default path's
    matching of `<|endoftext|>` in the text (transformers' added-token split)."""

    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def __init__(self, vocab_file: str, merge_file: str, match_eot: bool) -> None:
        with open(vocab_file) as f:
            self.encoder = json.load(f)
        with open(merge_file, encoding="utf-8") as f:
            merges = [tuple(line.split()) for line in f.read().split("\n")[1:-1]]
        self.ranks = dict(zip(merges, range(len(merges))))
        self.byte_encoder = _bytes_to_unicode()
        self.match_eot = match_eot
        self.eod = self.encoder[EOT]

    def bpe(self, token: str) -> list[str]:
        word = tuple(token)
        if len(word) < 2:
            return [token]
        while True:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if bigram not in self.ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
        return list(word)

    def _encode_plain(self, text: str) -> list[int]:
        ids = []
        for token in self.pat.findall(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder.get(piece, 0) for piece in self.bpe(token))
        return ids

    def encode(self, text: str) -> list[int]:
        if not self.match_eot:
            return self._encode_plain(text)
        ids = []
        for i, piece in enumerate(text.split(EOT)):
            if i:
                ids.append(self.eod)
            ids.extend(self._encode_plain(piece))
        return ids


def _training_texts() -> list[str]:
    return synthetic_documents(300, seed=21) + TRICKY * 10 + [
        "def f(x):\n    return x  # it's   fine\t\t\n\n", "Ünïcödé 中文 한국어 🙂 naïve — “q”"] * 10


@functools.lru_cache(maxsize=None)
def gpt2_files(root: str) -> tuple[str, str]:
    """vocab.json and merges.txt of a byte-level BPE trained on the spot (GPT-2's file formats)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_training_texts(), trainer)
    path = os.path.join(root, "gpt2")
    os.makedirs(path)
    vocab_file, merge_file = tokenizer.model.save(path)
    return vocab_file, merge_file


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return gpt2_files(str(tmp_path_factory.mktemp("gpt2tok")))


def _fuzz_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = (list("ab cdefg hi  \t\n\r'sStT.,!?-_0123456789") + ["'re", "'ll", "'D", EOT, "  \n"]
                + [chr(c) for c in (0x1c, 0x1f, 0x85, 0xa0, 0x2028, 0x200b, 0xfeff, 0x3000, 0x1680,
                                    0x202f, 0xb, 0xc, 0xad, 0x300, 0x301)]
                + list("éü中文한국🙂—“’ʼ₀²½ⅷ٣ßİıﬁ"))
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(count)]


@pytest.mark.parametrize("legacy", [False, True])
def test_encode_matches_megatron_lm(files, legacy):
    tokenizer = load_tokenizer(None, "GPT2BPETokenizer", vocab_file=files[0], merge_file=files[1],
                               legacy=legacy)
    reference = ReferenceGPT2(*files, match_eot=not legacy)
    texts = TRICKY + _fuzz_texts(3000, seed=int(legacy)) + synthetic_documents(50, seed=5)
    # Every code point once, between letters and doubled after a space.
    texts += ["a" + "".join(chr(c) for c in range(lo, min(lo + 64, 0x110000))
                            if not 0xd800 <= c < 0xe000) + "b " + chr(lo) * 2
              for lo in range(0, 0x110000, 64) if not 0xd800 <= lo < 0xe000]
    batch = tokenizer.encode_batch(texts)
    for text, ids in zip(texts, batch):
        want = reference.encode(text)
        assert ids.tolist() == want, text
    assert [tokenizer.encode(t) for t in TRICKY] == [reference.encode(t) for t in TRICKY]
    assert tokenizer.eod == reference.eod and tokenizer.vocab_size == len(reference.encoder)
    for text in TRICKY:  # byte-level: decoding gives the text back
        assert tokenizer.decode(tokenizer.encode(text)) == text
    eot = tokenizer.encode(f"x{EOT}")
    assert (eot[-1] == tokenizer.eod) != legacy and len(eot) == (2 if not legacy else len(eot))


def test_default_path_equals_transformers_gpt2(files):
    """megatron.core.tokenizers' GPT2BPETokenizer: transformers' GPT-2 tokenizer on these files."""
    from transformers import GPT2Tokenizer

    hf = GPT2Tokenizer.from_pretrained(os.path.dirname(files[0]))  # vocab.json + merges.txt only
    tokenizer = GPT2BPETokenizer(*files)
    for text in TRICKY + _fuzz_texts(500, seed=7):
        assert tokenizer.encode(text) == hf.convert_tokens_to_ids(hf.tokenize(text)), text
    assert tokenizer.eod == hf.eos_token_id and tokenizer.vocab_size == len(hf)


def test_merges_file_read_as_megatron_lm_reads_it(files, tmp_path):
    """No header: the first merge is dropped; no final newline: the last one; a repeated pair
    keeps its later rank; lines that are not pairs are skipped."""
    with open(files[1], encoding="utf-8") as f:
        lines = f.read().split("\n")[1:-1]
    variants = {
        "headerless": "\n".join(lines) + "\n",
        "no final newline": "#version: 0.2\n" + "\n".join(lines),
        "repeated and odd lines": ("#version: 0.2\n" + "\n".join(lines[:40]) + "\n\nx y z\n"
                                   + "\n".join(lines[5:10] + lines[40:]) + "\n"),
    }
    texts = TRICKY + synthetic_documents(40, seed=8)
    for name, content in variants.items():
        merge_file = tmp_path / f"{len(name)}.txt"
        merge_file.write_text(content, encoding="utf-8")
        ours = GPT2BPETokenizer(files[0], str(merge_file), legacy=True)
        reference = ReferenceGPT2(files[0], str(merge_file), match_eot=False)
        assert [ours.encode(t) for t in texts] == [reference.encode(t) for t in texts], name


def _lines() -> list[str]:
    lines = []
    for i, text in enumerate(synthetic_documents(150, seed=9)):
        if i % 7 == 1:
            text = f"{text[:20]}{EOT}{text[20:]}  \t tabs  and   runs\n\n"
        if i % 11 == 2:
            text = TRICKY[i % len(TRICKY)] + text
        record = {"text": text, "title": text[:15]}
        if i % 17 == 4:
            record["text"] = ""
        if i % 13 == 6:
            record["text"] = [text[:25], "", text[25:]]
        lines.append(json.dumps(record, ensure_ascii=i % 2 == 0))
    return lines


def _gpt2_flags(files, *extra: str) -> list[str]:
    return ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", files[0], "--merge-file",
            files[1], *extra]


def _write(tmp_path, lines: list[str]) -> str:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _preprocess(tmp_path, lines, files, prefix: str, *flags: str) -> int:
    return preprocess_data.main(["--input", _write(tmp_path, lines), "--output-prefix",
                                 str(tmp_path / prefix), "--no-progress", *_gpt2_flags(files, *flags)])


@pytest.mark.parametrize("append_eod,legacy", [(True, False), (False, False), (True, True), (False, True)])
def test_preprocess_byte_identical_to_megatron_lm(tmp_path, monkeypatch, files, append_eod, legacy):
    monkeypatch.setattr(preprocess_module, "CHUNK_BYTES", 1500)  # many chunks for 2 workers
    lines = _lines()
    flags = ["--json-keys", "text", "title", "--workers", "2"]
    flags += (["--append-eod"] if append_eod else []) + (["--legacy-tokenizer"] if legacy else [])
    assert _preprocess(tmp_path, lines, files, "ours", *flags) == 0
    reference = ReferenceGPT2(*files, match_eot=not legacy)
    _reference(str(tmp_path / "ref"), lines, ["text", "title"], reference.encode, reference.eod,
               len(reference.encoder), append_eod)
    for key in ("text", "title"):
        assert _same(str(tmp_path / f"ours_{key}_document"), str(tmp_path / f"ref_{key}_document"))
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(tmp_path / "ours_text_document"))
    assert dataset[0].dtype == np.uint16 and len(dataset) > 100


def test_partitions_order_as_megatron_lm(tmp_path, files):
    """--partitions 3: line i to partition i mod 3, partitions concatenated (Megatron-LM's merge);
    --keep-sequential-samples: contiguous partitions, the bytes of --partitions 1."""
    lines = _lines()
    common = ["--append-eod", "--workers", "2", "--json-keys", "text", "title", "--log-interval", "7"]
    assert _preprocess(tmp_path, lines, files, "p1", *common) == 0
    assert _preprocess(tmp_path, lines, files, "p3", "--partitions", "3", *common) == 0
    assert _preprocess(tmp_path, lines, files, "p3s", "--partitions", "3",
                       "--keep-sequential-samples", *common) == 0
    reference = ReferenceGPT2(*files, match_eot=True)
    dealt = [line for p in range(3) for line in lines[p::3]]
    _reference(str(tmp_path / "ref3"), dealt, ["text", "title"], reference.encode, reference.eod,
               len(reference.encoder), True)
    for key in ("text", "title"):
        assert _same(str(tmp_path / f"p3_{key}_document"), str(tmp_path / f"ref3_{key}_document"))
        assert _same(str(tmp_path / f"p3s_{key}_document"), str(tmp_path / f"p1_{key}_document"))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no spool left behind


class _FakePunkt:
    """Stands in for NLTK's punkt: sentences end at '. ' (keep_newlines: newlines kept)."""

    def __init__(self, keep_newlines: bool) -> None:
        self.keep_newlines = keep_newlines

    def tokenize(self, text: str) -> list[str]:
        parts = regex.split(r"(?<=\.)\s+" if not self.keep_newlines else r"(?<=\.) +", text)
        return [p for p in parts if p]


@pytest.mark.parametrize("keep_newlines", [False, True])
def test_split_sentences_as_megatron_lm(tmp_path, monkeypatch, files, keep_newlines):
    """Each sentence is a sequence; outputs are PREFIX_{key}_sentence; a document's text is split
    in pieces of 1,000,000 characters (shrunk here) as in Megatron-LM's Encoder.split."""
    splitter = _FakePunkt(keep_newlines)
    loads = []

    def fake_loader(lang, keep):
        loads.append((lang, keep))
        return _FakePunkt(keep)

    monkeypatch.setattr(encode_module, "load_sentence_splitter", fake_loader)
    monkeypatch.setattr(preprocess_module, "load_sentence_splitter", fake_loader)
    monkeypatch.setattr(encode_module, "SPLIT_PIECE_CHARS", 90)
    texts = [t.replace(" the ", ". The ", 2) + ". End.\n\nNext one. x" for t in synthetic_documents(80, seed=4)]
    texts[3] = ""
    lines = [json.dumps({"text": t}) for t in texts]
    flags = ["--append-eod", "--workers", "2", "--split-sentences", "--lang", "english"]
    flags += ["--keep-newlines"] if keep_newlines else []
    assert _preprocess(tmp_path, lines, files, "ours", *flags) == 0
    assert loads and set(loads) == {("english", keep_newlines)}
    split_lines = [json.dumps({"text": [s for i in range(0, len(t), 90) for s in splitter.tokenize(t[i:i + 90])]})
                   for t in texts]
    reference = ReferenceGPT2(*files, match_eot=True)
    _reference(str(tmp_path / "ref"), split_lines, ["text"], reference.encode, reference.eod,
               len(reference.encoder), True)
    # _reference names its output _document; Megatron-LM's level for split sentences is _sentence.
    for ext in ("bin", "idx"):
        os.replace(tmp_path / f"ref_text_document.{ext}", tmp_path / f"ref_text_sentence.{ext}")
    assert _same(str(tmp_path / "ours_text_sentence"), str(tmp_path / "ref_text_sentence"))
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(tmp_path / "ours_text_sentence"))
    assert dataset.sequence_lengths.size > dataset.document_indices.size  # several per document


def test_split_sentences_with_nltk_punkt(tmp_path, files):
    """With NLTK and its punkt data installed: the real splitter, Megatron-LM's way."""
    pytest.importorskip("nltk")
    try:
        splitter = encode_module.load_sentence_splitter("english", False)
    except preprocess_module.InputError as err:
        pytest.skip(str(err))
    texts = ["Dr. Smith went home. He slept!  Then he woke up.\nA new line. Done?"] * 3
    lines = [json.dumps({"text": t}) for t in texts]
    assert _preprocess(tmp_path, lines, files, "ours", "--workers", "1", "--split-sentences") == 0
    reference = ReferenceGPT2(*files, match_eot=True)
    split_lines = [json.dumps({"text": splitter.tokenize(t)}) for t in texts]
    _reference(str(tmp_path / "ref"), split_lines, ["text"], reference.encode, reference.eod,
               len(reference.encoder), False)
    for ext in ("bin", "idx"):
        os.replace(tmp_path / f"ref_text_document.{ext}", tmp_path / f"ref_text_sentence.{ext}")
    assert _same(str(tmp_path / "ours_text_sentence"), str(tmp_path / "ref_text_sentence"))


def test_split_sentences_without_nltk_refuses(tmp_path, monkeypatch, files, capsys):
    monkeypatch.setitem(sys.modules, "nltk", None)  # import nltk raises ImportError
    lines = [json.dumps({"text": "One. Two."})]
    assert _preprocess(tmp_path, lines, files, "out", "--workers", "1", "--split-sentences") == 1
    err = capsys.readouterr().err
    assert "--split-sentences needs NLTK's punkt" in err and "pip install nltk" in err, err
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_keep_newlines_alone_is_noted(tmp_path, files, capsys):
    lines = [json.dumps({"text": "One. Two."})]
    assert _preprocess(tmp_path, lines, files, "out", "--workers", "1", "--keep-newlines") == 0
    assert "--keep-newlines only changes --split-sentences" in capsys.readouterr().err


BAD = {
    "no vocab file": (["--merge-file", "{merges}"], "--merge-file needs --vocab-file too"),
    "no files": ([], "GPT2BPETokenizer needs --vocab-file VOCAB.json and --merge-file MERGES.txt"),
    "no merge file": (["--vocab-file", "{vocab}"], "GPT2BPETokenizer needs --vocab-file"),
    "missing vocab": (["--vocab-file", "{nope}", "--merge-file", "{merges}"], "--vocab-file {nope}: no such file"),
    "missing merges": (["--vocab-file", "{vocab}", "--merge-file", "{nope}"], "--merge-file {nope}: no such file"),
    "swapped": (["--vocab-file", "{merges}", "--merge-file", "{vocab}"], "not a JSON vocabulary"),
    "no <|endoftext|>": (["--vocab-file", "{no_eot}", "--merge-file", "{merges}"], "no <|endoftext|> token"),
    "other files": (["--vocab-file", "{vocab}", "--merge-file", "{other_merges}"],
                    "which is not in --vocab-file"),
    "with --tokenizer-model": (["--vocab-file", "{vocab}", "--merge-file", "{merges}",
                                "--tokenizer-model", "{vocab}"], "not --tokenizer-model"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_gpt2_arguments_fail_cleanly(tmp_path, capsys, files, case):
    flags, message = BAD[case]
    root = tmp_path / "tok"
    root.mkdir()
    with open(files[0], encoding="utf-8") as f:
        vocab = json.load(f)
    eot = vocab.pop(EOT)
    vocab = {k: (v if v < eot else v - 1) for k, v in vocab.items()}
    (root / "no_eot.json").write_text(json.dumps(vocab), encoding="utf-8")
    (root / "other.txt").write_text("#version: 0.2\nq z\n", encoding="utf-8")
    paths = {"vocab": files[0], "merges": files[1], "nope": str(root / "nope.json"),
             "no_eot": str(root / "no_eot.json"), "other_merges": str(root / "other.txt")}
    flags = [f.format(**paths) for f in flags]
    message = message.format(**paths)
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.jsonl").write_text(json.dumps({"text": "hello"}) + "\n", encoding="utf-8")
    argv = ["--input", str(data / "in.jsonl"), "--output-prefix", str(data / "out"), "--workers", "1",
            "--no-progress", "--tokenizer-type", "GPT2BPETokenizer", *flags]
    assert preprocess_data.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("preprocess_data.py: error: ") and "\n" not in err and message in err, err
    assert sorted(os.listdir(data)) == ["in.jsonl"]


def test_loader_and_training_config(files):
    """load_tokenizer infers GPT2BPETokenizer from the two files; pretrain/evaluate flags exist."""
    from megatron_patch.training.config import DataConfig

    tokenizer = load_tokenizer(None, vocab_file=files[0], merge_file=files[1])
    assert type(tokenizer).__name__ == "GPT2BPETokenizer"
    assert load_tokenizer(GPT2BPEFiles(*files)).vocab_size == tokenizer.vocab_size
    assert tokenizer.unique_identifiers["vocab_file"] == os.path.abspath(files[0])
    with pytest.raises(ValueError, match="read only by --tokenizer-type GPT2BPETokenizer"):
        load_tokenizer(None, "NullTokenizer", vocab_size=10, vocab_file=files[0])
    DataConfig(data_path=["x"], tokenizer_type="GPT2BPETokenizer", vocab_file=files[0],
               merge_file=files[1]).validate_fields()
    with pytest.raises(ValueError, match="--merge-file"):
        DataConfig(data_path=["x"], tokenizer_type="GPT2BPETokenizer", vocab_file=files[0]).validate_fields()


def test_hf_export_loads_in_transformers(files, tmp_path):
    """The export ships tokenizer.json, vocab.json, merges.txt: transformers' AutoTokenizer and
    GPT2Tokenizer on those files give the ids training used."""
    from transformers import AutoTokenizer, GPT2Tokenizer

    from megatron_patch.export.tokenizer import sentencepiece_special_ids, write_hf_tokenizer

    spec = GPT2BPEFiles(*files)
    write_hf_tokenizer(spec, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["merges.txt", "special_tokens_map.json", "tokenizer.json",
                                            "tokenizer_config.json", "vocab.json"]
    ours = load_tokenizer(spec)
    auto = AutoTokenizer.from_pretrained(str(tmp_path))
    bare = tmp_path / "files_only"  # GPT2Tokenizer from vocab.json + merges.txt, no tokenizer.json
    bare.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(tmp_path / name, bare / name)
    slow = GPT2Tokenizer.from_pretrained(str(bare))
    for text in TRICKY + _fuzz_texts(300, seed=3) + synthetic_documents(20, seed=2):
        want = ours.encode(text)
        assert auto(text, add_special_tokens=False)["input_ids"] == want, text
        assert slow.convert_tokens_to_ids(slow.tokenize(text)) == want, text
        assert auto.decode(want) == text
    assert auto.eos_token_id == ours.eod and len(auto) == ours.vocab_size
    special = sentencepiece_special_ids(spec, ours.vocab_size)
    assert special["eos_token_id"] == special["bos_token_id"] == ours.eod
    from megatron_patch.export.tokenizer import TokenizerExportError

    with pytest.raises(TokenizerExportError, match="vocab_size"):
        sentencepiece_special_ids(spec, ours.vocab_size + 1)
