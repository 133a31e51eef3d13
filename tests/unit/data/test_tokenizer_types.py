"""--tokenizer-type HuggingFaceTokenizer / NullTokenizer: Megatron-LM byte identity, loader, errors.

The references follow Megatron-LM's preprocess_data.py (core_v0.16.1, megatron.core.tokenizers
with its default flags), checked side by side against that script:
- HuggingFaceTokenizer: transformers' AutoTokenizer on the directory, ids =
  convert_tokens_to_ids(tokenize(text)) (no special tokens added), EOD = eos_token_id;
- NullTokenizer: ids = the integers of the text, vocabulary --vocab-size + 1, EOD = --vocab-size;
each sequence feeding megatron-core's IndexedDatasetBuilder as Megatron-LM's Encoder does.
"""
from __future__ import annotations

import filecmp
import functools
import json
import os

import numpy as np
import pytest

from megatron_patch.cli import preprocess_data
from megatron_patch.data import load_tokenizer
from megatron_patch.data import preprocess as preprocess_module
from tests._data_helpers import synthetic_documents, tiny_tokenizer

EOS = "<|endoftext|>"


@functools.lru_cache(maxsize=None)
def hf_tokenizer_dir(root: str, with_eos: bool = True) -> str:
    """A byte-level BPE tokenizer.json (and tokenizer_config.json naming EOS) trained on the spot."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(synthetic_documents(300, seed=11), trainer)
    tokenizer.add_tokens([AddedToken("<think>", special=False)])
    path = os.path.join(root, "hf" if with_eos else "hf_bare")
    os.makedirs(path)
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    if with_eos:
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS}, f)
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return hf_tokenizer_dir(str(tmp_path_factory.mktemp("tok")))


def _reference(prefix: str, lines: list[str], keys: list[str], encode, eod, vocab_size,
               append_eod: bool) -> None:
    """Megatron-LM's Encoder.encode loop feeding megatron-core's IndexedDatasetBuilder."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    builders = {key: IndexedDatasetBuilder(f"{prefix}_{key}_document.bin",
                                           dtype=DType.optimal_dtype(vocab_size)) for key in keys}
    for line in lines:
        record = json.loads(line)
        for key in keys:
            text = record[key]
            doc, lengths = [], []
            for sentence in text if isinstance(text, list) else [text]:
                ids = encode(sentence)
                if len(ids) > 0:
                    doc.extend(ids)
                    lengths.append(len(ids))
            if len(doc) > 0 and append_eod:
                doc.append(eod)
                lengths[-1] += 1
            builders[key].add_document(doc, lengths)
    for key in keys:
        builders[key].finalize(f"{prefix}_{key}_document.idx")


def _same(a: str, b: str) -> bool:
    return all(filecmp.cmp(f"{a}.{ext}", f"{b}.{ext}", shallow=False) for ext in ("bin", "idx"))


def _run(tmp_path, lines: list[str], *flags: str) -> int:
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return preprocess_data.main(["--input", str(tmp_path / "in.jsonl"), "--output-prefix",
                                 str(tmp_path / "ours"), "--no-progress", *flags])


def _hf_lines() -> list[str]:
    lines = []
    for i, text in enumerate(synthetic_documents(120, seed=3)):
        if i % 5 == 1:
            text = f"{text[:20]}{EOS}{text[20:]} <think> x"  # special and added tokens in the text
        record = {"text": text, "title": text[:15]}
        if i % 17 == 4:
            record["text"] = ""
        if i % 13 == 6:
            record["text"] = [text[:25], "", text[25:]]
        lines.append(json.dumps(record, ensure_ascii=i % 2 == 0))
    return lines


@pytest.mark.parametrize("append_eod", [True, False])
def test_huggingface_byte_identical_to_megatron_lm(tmp_path, monkeypatch, hf_dir, append_eod):
    from transformers import AutoTokenizer

    monkeypatch.setattr(preprocess_module, "CHUNK_BYTES", 1500)  # many chunks for 2 workers
    lines = _hf_lines()
    flags = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", hf_dir,
             "--json-keys", "text", "title", "--workers", "2"] + (["--append-eod"] if append_eod else [])
    assert _run(tmp_path, lines, *flags) == 0
    hf = AutoTokenizer.from_pretrained(hf_dir)
    _reference(str(tmp_path / "ref"), lines, ["text", "title"],
               lambda s: hf.convert_tokens_to_ids(hf.tokenize(s)), hf.eos_token_id, len(hf), append_eod)
    for key in ("text", "title"):
        assert _same(str(tmp_path / f"ours_{key}_document"), str(tmp_path / f"ref_{key}_document"))


def test_huggingface_loader(hf_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = load_tokenizer(hf_dir)  # a directory: HuggingFaceTokenizer
    hf = AutoTokenizer.from_pretrained(hf_dir)
    assert type(tokenizer).__name__ == "HuggingFaceTokenizer"
    assert tokenizer.vocab_size == len(hf) and tokenizer.eod == hf.eos_token_id >= 0
    assert tokenizer.unique_identifiers["tokenizer_path"] == os.path.abspath(hf_dir)
    text = "patch level training\n  averages tokens é 中文 <think>"
    ids = tokenizer.encode(text)
    assert ids == hf.convert_tokens_to_ids(hf.tokenize(text)) and tokenizer.decode(ids) == text
    assert load_tokenizer(tiny_tokenizer()).unique_identifiers["class"] == "SentencePieceTokenizer"


def test_huggingface_export_copies_files_unchanged(hf_dir, tmp_path):
    from megatron_patch.export.tokenizer import sentencepiece_special_ids, write_hf_tokenizer

    write_hf_tokenizer(hf_dir, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json", "tokenizer_config.json"]
    for name in os.listdir(tmp_path):
        assert filecmp.cmp(os.path.join(hf_dir, name), tmp_path / name, shallow=False)
    vocab = load_tokenizer(hf_dir).vocab_size
    assert sentencepiece_special_ids(hf_dir, vocab)["eos_token_id"] == load_tokenizer(hf_dir).eod
    with pytest.raises(ValueError, match="vocab_size"):
        sentencepiece_special_ids(hf_dir, vocab + 1)


def _null_lines(vocab_size: int) -> list[str]:
    rng = np.random.default_rng(vocab_size)
    lines = []
    for i in range(200):
        ids = " ".join(str(int(x)) for x in rng.integers(0, vocab_size, int(rng.integers(1, 50))))
        lines.append(json.dumps({"text": [ids, "7"] if i % 9 == 2 else ids}))
    return lines


@pytest.mark.parametrize("vocab_size,dtype", [(65498, np.uint16), (65499, np.int32)])
def test_null_byte_identical_to_megatron_lm(tmp_path, vocab_size, dtype):
    """--vocab-size N: vocabulary N + 1 (int32 from N = 65499 on), EOD = N."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    lines = _null_lines(vocab_size)
    flags = ["--tokenizer-type", "NullTokenizer", "--vocab-size", str(vocab_size), "--append-eod",
             "--workers", "2"]
    assert _run(tmp_path, lines, *flags) == 0
    _reference(str(tmp_path / "ref"), lines, ["text"], lambda s: [int(x) for x in s.split(" ")],
               vocab_size, vocab_size + 1, True)
    assert _same(str(tmp_path / "ours_text_document"), str(tmp_path / "ref_text_document"))
    dataset = IndexedDataset(str(tmp_path / "ours_text_document"))
    assert dataset[0].dtype == dtype and dataset[0][-1] == vocab_size
    tokenizer = load_tokenizer(None, "NullTokenizer", vocab_size=vocab_size)
    assert (tokenizer.vocab_size, tokenizer.eod) == (vocab_size + 1, vocab_size)
    assert tokenizer.encode("3 1\t4") == [3, 1, 4] and tokenizer.decode([3, 1, 4]) == "3 1 4"


BAD = {
    "missing tokenizer.json": (["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "{empty}"],
                               "no tokenizer.json"),
    "not a directory": (["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "{nope}"],
                        "not a directory"),
    "no --vocab-size": (["--tokenizer-type", "NullTokenizer"], "--vocab-size"),
    "unknown type": (["--tokenizer-type", "GPT2BPE", "--tokenizer-model", "{empty}"],
                     "unknown --tokenizer-type 'GPT2BPE'; choose one of SentencePieceTokenizer"),
    "no tokenizer": ([], "no tokenizer given"),
    "no EOS for --append-eod": (["--tokenizer-model", "{bare}", "--append-eod"], "no end-of-document"),
    "id outside the vocabulary": (["--tokenizer-type", "NullTokenizer", "--vocab-size", "10"],
                                  "in.jsonl:2: cannot encode this text: id 12 is outside the "
                                  "vocabulary [0, 11)"),
    "not an id": (["--tokenizer-type", "NullTokenizer", "--vocab-size", "100"],
                  "in.jsonl:3: cannot encode this text: NullTokenizer reads whitespace-separated "
                  "integer ids, got 'x'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tokenizer_arguments_fail_cleanly(tmp_path, capsys, case):
    flags, message = BAD[case]
    root = tmp_path / "tokenizers"
    (root / "empty").mkdir(parents=True)
    paths = {"empty": str(root / "empty"), "nope": str(root / "nope.json"),
             "bare": hf_tokenizer_dir(str(root), with_eos=False) if "{bare}" in flags else ""}
    flags = [f.format(**paths) for f in flags]
    data = tmp_path / "data"
    data.mkdir()
    lines = [json.dumps({"text": t}) for t in ("1 2 3", "4 12 5", "6 x 7")]
    assert _run(data, lines, *flags, "--workers", "2") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("preprocess_data.py: error: ") and "\n" not in err and message in err, err
    assert sorted(os.listdir(data)) == ["in.jsonl"]  # no outputs, no temporaries
