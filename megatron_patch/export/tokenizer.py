"""Ship the training tokenizer with a Hugging Face export, encoding exactly as training did.

A Hugging Face tokenizer directory (HuggingFaceTokenizer: tokenizer.json, ...) is copied as it is:
`write_hf_tokenizer(tokenizer_dir, out_dir)` copies tokenizer.json, tokenizer_config.json and
special_tokens_map.json (those present), byte for byte.

For a sentencepiece model, `write_hf_tokenizer(spm_model, out_dir)` writes
- tokenizer.model: the sentencepiece model itself (the source of truth),
- tokenizer.json: a `tokenizers` pipeline rebuilt from the model's own settings,
- tokenizer_config.json / special_tokens_map.json: special tokens for `AutoTokenizer`,
then encodes probe texts with both and raises `TokenizerExportError` if any id differs.

Why rebuild instead of using transformers' LlamaTokenizer conversion: that conversion assumes
LLaMA's settings (BPE, identity normaliser, no whitespace collapsing). A tokenizer trained here
may be unigram or use sentencepiece's default `nmt_nfkc` normaliser with extra-whitespace removal;
the pipeline below follows whatever the model file says:
  normaliser: precompiled charsmap -> strip/collapse spaces (remove_extra_whitespaces)
              -> spaces to U+2581 (escape_whitespaces) -> leading U+2581 (add_dummy_prefix)
  model:      Unigram with the piece scores, or BPE whose merges are every split of a piece
              into two pieces, ranked by the merged piece's score (sentencepiece merges the
              adjacent pair whose concatenation scores highest)
  decoder:    U+2581 to space, byte-fallback pieces to bytes, drop the dummy prefix.
For GPT-2's byte-level BPE (GPT2BPETokenizer), `write_hf_tokenizer(GPT2BPEFiles(vocab, merges),
out_dir)` writes tokenizer.json (the `tokenizers` pipeline training encoded with), vocab.json and
merges.txt (the merges as Megatron-LM read them, with a "#version" header and a final newline, so
every loader reads the same list), tokenizer_config.json (GPT2Tokenizer, `<|endoftext|>` as
BOS/EOS/UNK, as GPT-2's) and special_tokens_map.json, then checks the written tokenizer.json
against training's encoder. `<|endoftext|>` typed in text is the EOS token, as for GPT-2 in
transformers and megatron-core (Megatron-LM's --legacy-tokenizer spelled it out).

One known difference: control pieces (<s>, </s>) typed literally in text are matched as special
tokens by HF and spelled out character by character by sentencepiece; evaluation text never
contains them. Needs `protobuf` (to read the model file) and `tokenizers`.
"""
import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from megatron_patch import io
from megatron_patch.data.tokenizer import GPT2_EOD, HF_TOKENIZER_FILES, GPT2BPEFiles

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2
_SPACE = "\u2581"

# Probe texts for the equivalence check: spaces, tabs, newlines, digits, punctuation, accents,
# CJK, emoji (byte fallback), compatibility characters (NFKC).
PROBE_TEXTS = (
    "Hello world, this is a test.",
    " The quick brown fox jumps over the lazy dog.",
    "  leading spaces,\ttabs\nand newlines\n\n  trailing  ",
    "Numbers: 3.14159, 2,718 and 1e-9; (parentheses) [brackets] {braces}!?",
    "Ünïcödé façade naïve — “quotes” ‘single’ … 漢字 かな 한국어 🙂👍",
    "def f(x):\n    return x ** 2  # comment",
    "ﬁ ligature ① ＡＢＣ full-width",
    "a  b   c",
    "",
    " ",
)


class TokenizerExportError(ValueError):
    """The sentencepiece model cannot be reproduced exactly by a HF fast tokenizer."""


def _load_proto(spm_model):
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError as e:  # the module is in sentencepiece; it imports google.protobuf
        raise ImportError(
            "reading a sentencepiece model file needs the `protobuf` package: pip install protobuf"
        ) from e
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(Path(spm_model).read_bytes())
    except Exception as e:
        raise TokenizerExportError(f"{spm_model} is not a sentencepiece model: {e}") from e
    if not proto.pieces:
        raise TokenizerExportError(f"{spm_model} is not a sentencepiece model (no pieces)")
    return proto


def hf_tokenizer_special_ids(tokenizer_dir, vocab_size: Optional[int] = None) -> Dict[str, Optional[int]]:
    """{bos,eos,pad}_token_id of a Hugging Face tokenizer directory (None where absent); checks its size.

    Loaded the way training loads it (megatron_patch.data.load_tokenizer), so the size is the one
    the model was built with.
    """
    from megatron_patch.data.tokenizer import HuggingFaceTokenizer

    try:
        tokenizer = HuggingFaceTokenizer(str(tokenizer_dir))
    except ValueError as e:
        raise TokenizerExportError(str(e)) from None
    if vocab_size is not None and tokenizer.vocab_size != vocab_size:
        raise TokenizerExportError(
            f"tokenizer {tokenizer_dir} has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{vocab_size}; pass the tokenizer the model was trained with"
        )
    hf = tokenizer.transformers_tokenizer
    return {"bos_token_id": hf.bos_token_id, "eos_token_id": hf.eos_token_id, "pad_token_id": hf.pad_token_id}


def copy_hf_tokenizer(tokenizer_dir, out_dir) -> List[str]:
    """Copy a Hugging Face tokenizer's files unchanged into out_dir; returns the names copied."""
    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise TokenizerExportError(
            f"{tokenizer_dir}: no tokenizer.json; pass the Hugging Face tokenizer directory used for training"
        )
    copied = []
    for name in HF_TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            with io.atomic_path(str(Path(out_dir) / name)) as tmp:
                shutil.copyfile(tokenizer_dir / name, tmp)
            copied.append(name)
    return copied


def sentencepiece_special_ids(spm_model, vocab_size: Optional[int] = None) -> Dict[str, Optional[int]]:
    """{bos,eos,pad}_token_id of a sentencepiece model (None where absent); checks its size.

    A directory is a Hugging Face tokenizer: see hf_tokenizer_special_ids; GPT2BPEFiles GPT-2's
    byte-level BPE: see gpt2_special_ids."""
    if isinstance(spm_model, GPT2BPEFiles):
        return gpt2_special_ids(spm_model, vocab_size)
    import sentencepiece as spm

    if Path(spm_model).is_dir():
        return hf_tokenizer_special_ids(spm_model, vocab_size)

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    if vocab_size is not None and sp.get_piece_size() != vocab_size:
        raise TokenizerExportError(
            f"tokenizer {spm_model} has {sp.get_piece_size()} pieces but the model's vocab_size is "
            f"{vocab_size}; pass the tokenizer the model was trained with"
        )

    def opt(i):
        return i if i >= 0 else None

    return {"bos_token_id": opt(sp.bos_id()), "eos_token_id": opt(sp.eos_id()), "pad_token_id": opt(sp.pad_id())}


def build_hf_tokenizer(spm_model):
    """A `tokenizers.Tokenizer` that encodes like `SentencePieceProcessor.encode(text)`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE, Unigram

    proto = _load_proto(spm_model)
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    if trainer.treat_whitespace_as_suffix:
        raise TokenizerExportError("treat_whitespace_as_suffix=True tokenizers are not supported")
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    unk_piece = pieces[trainer.unk_id][0]

    if trainer.model_type == _UNIGRAM:
        # Only normal and user-defined pieces may be matched from text; the others get a score
        # no path would choose (byte pieces stay findable by name for byte fallback).
        vocab = [(piece, score if kind in (_NORMAL, _USER_DEFINED) else -1e9) for piece, score, kind in pieces]
        model = Unigram(vocab, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback)
    elif trainer.model_type == _BPE:
        vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
        normal = {piece: (score, i) for i, (piece, score, kind) in enumerate(pieces) if kind == _NORMAL}
        ranked = []
        for piece, (score, i) in normal.items():
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in normal and right in normal:
                    ranked.append((-score, i, cut, left, right))
        merges = [(left, right) for *_, left, right in sorted(ranked)]
        model = BPE(vocab, merges, unk_token=unk_piece, fuse_unk=True, byte_fallback=trainer.byte_fallback)
    else:
        raise TokenizerExportError(
            f"sentencepiece model_type {trainer.model_type} is not supported (unigram=1 and bpe=2 are)"
        )

    tok = Tokenizer(model)
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", _SPACE))
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(_SPACE))  # Prepend leaves an empty text empty, as sentencepiece does
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace(_SPACE, " ")]
    if trainer.byte_fallback:
        dec.append(decoders.ByteFallback())
    dec.append(decoders.Fuse())
    if norm.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(dec)
    tok.add_tokens([AddedToken(p, normalized=True, special=False) for p, _, kind in pieces if kind == _USER_DEFINED])
    tok.add_special_tokens(
        [AddedToken(p, normalized=False, special=True) for p, _, kind in pieces if kind in (_CONTROL, _UNKNOWN)]
    )
    return tok


def check_equivalent(spm_model, tok, texts: Iterable[str] = PROBE_TEXTS) -> int:
    """Raise TokenizerExportError at the first text the two encode differently; returns texts checked."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    n = 0
    for text in texts:
        want = sp.encode(text)
        got = tok.encode(text, add_special_tokens=False).ids
        if want != got:
            raise TokenizerExportError(
                f"HF tokenizer rebuilt from {spm_model} disagrees with sentencepiece on {text[:80]!r}:\n"
                f"  sentencepiece {want[:24]}\n  HF            {got[:24]}"
            )
        n += 1
    return n


def write_hf_tokenizer(spm_model, out_dir, add_bos_token: bool = False, check_texts: Iterable[str] = ()) -> None:
    """Write tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json.

    spm_model: a sentencepiece .model, or a Hugging Face tokenizer directory, whose files are
        copied unchanged (add_bos_token and check_texts do not apply: its own files decide),
        or GPT2BPEFiles (see write_gpt2_tokenizer; add_bos_token does not apply).
    add_bos_token: whether the HF tokenizer prepends BOS (match how the training data was built).
    check_texts: extra texts (e.g. some of the corpus) for the equivalence check.
    """
    if isinstance(spm_model, GPT2BPEFiles):
        write_gpt2_tokenizer(spm_model, out_dir, check_texts)
        return
    import sentencepiece as spm

    if Path(spm_model).is_dir():
        copy_hf_tokenizer(spm_model, out_dir)
        return
    out_dir = Path(out_dir)
    tok = build_hf_tokenizer(spm_model)
    check_equivalent(spm_model, tok, list(PROBE_TEXTS) + list(check_texts))
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    special = {}
    for name, i in (("unk_token", sp.unk_id()), ("bos_token", sp.bos_id()), ("eos_token", sp.eos_id()), ("pad_token", sp.pad_id())):
        if i >= 0:
            special[name] = sp.id_to_piece(i)
    if add_bos_token:
        if "bos_token" not in special:
            raise TokenizerExportError("add_bos_token=True but the sentencepiece model has no BOS piece")
        from tokenizers import processors

        bos = special["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, sp.bos_id())]
        )
    with io.atomic_path(str(out_dir / "tokenizer.model")) as tmp:
        shutil.copyfile(spm_model, tmp)
    with io.atomic_path(str(out_dir / "tokenizer.json")) as tmp:
        tok.save(tmp)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 1_000_000_000,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": add_bos_token,
        "add_eos_token": False,
        **special,
    }
    io.write_json(str(out_dir / "tokenizer_config.json"), config)
    io.write_json(str(out_dir / "special_tokens_map.json"), special)


def _gpt2_tokenizer(files: GPT2BPEFiles):
    from megatron_patch.data.tokenizer import GPT2BPETokenizer

    try:
        return GPT2BPETokenizer(files.vocab_file, files.merge_file)
    except ValueError as e:
        raise TokenizerExportError(str(e)) from None


def gpt2_special_ids(files: GPT2BPEFiles, vocab_size: Optional[int] = None) -> Dict[str, Optional[int]]:
    """{bos,eos,pad}_token_id of GPT-2's byte-level BPE: `<|endoftext|>` for BOS and EOS, as GPT-2's."""
    tokenizer = _gpt2_tokenizer(files)
    if vocab_size is not None and tokenizer.vocab_size != vocab_size:
        raise TokenizerExportError(
            f"tokenizer {files.vocab_file} has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{vocab_size}; pass the tokenizer the model was trained with"
        )
    return {"bos_token_id": tokenizer.eod, "eos_token_id": tokenizer.eod, "pad_token_id": None}


def write_gpt2_tokenizer(files: GPT2BPEFiles, out_dir, check_texts: Iterable[str] = ()) -> None:
    """GPT-2 BPE files for transformers: tokenizer.json, vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json (see the module docstring); TokenizerExportError if the written
    tokenizer.json encodes any probe text differently from training's tokenizer."""
    import json

    from tokenizers import Tokenizer

    tokenizer = _gpt2_tokenizer(files)
    out_dir = Path(out_dir)
    with io.atomic_path(str(out_dir / "tokenizer.json")) as tmp:
        tokenizer.backend.save(tmp)
    with io.atomic_path(str(out_dir / "vocab.json")) as tmp:
        Path(tmp).write_text(json.dumps(tokenizer.vocab, ensure_ascii=False), encoding="utf-8")
    with io.atomic_path(str(out_dir / "merges.txt")) as tmp:
        Path(tmp).write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tokenizer.merges),
                             encoding="utf-8")
    written = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    for text in list(PROBE_TEXTS) + [f"a{GPT2_EOD}b {GPT2_EOD}"] + list(check_texts):
        want = tokenizer.encode(text)
        got = written.encode(text, add_special_tokens=False).ids
        if want != got:
            raise TokenizerExportError(
                f"the exported tokenizer.json disagrees with training's GPT-2 BPE on {text[:80]!r}:\n"
                f"  training {want[:24]}\n  exported {got[:24]}"
            )
    special = {"bos_token": GPT2_EOD, "eos_token": GPT2_EOD, "unk_token": GPT2_EOD}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": 1_000_000_000,
        "add_prefix_space": False,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        **special,
    }
    io.write_json(str(out_dir / "tokenizer_config.json"), config)
    io.write_json(str(out_dir / "special_tokens_map.json"), special)
