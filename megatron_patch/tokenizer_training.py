"""Train a SentencePiece BPE tokenizer (LLaMA-2 style, byte fallback) on preprocessing inputs.

For users without a tokenizer: the result plugs into tools/preprocess_data.py --tokenizer-model
and the trainer's --tokenizer-model. Settings follow LLaMA-2's tokenizer.model: BPE, byte
fallback (no <unk> on unseen characters), split digits, whitespace kept as is (code stays
intact), <unk>=0 <s>=1 </s>=2, no pad. Documents are split into lines for training, because
SentencePiece learns from single lines; newlines are then encoded with the byte pieces.

    path = train_tokenizer(["data/corpus.jsonl"], "data/tok", vocab_size=8000)  # data/tok.model, .vocab
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterator, Sequence

from megatron_patch import io
from megatron_patch.data.encode import parse_chunk
from megatron_patch.data.text_input import InputError, expand_inputs, iter_chunks

MIN_VOCAB = 260  # byte fallback alone needs 256 byte pieces + <unk>, <s>, </s>


def iter_lines(inputs: Sequence[str], input_format: str = "auto",
               json_keys: Sequence[str] = ("text",)) -> Iterator[str]:
    """Non-empty lines of every document of every input."""
    files = expand_inputs(list(inputs), input_format)
    for chunk, _ in iter_chunks(files):
        texts, _, _ = parse_chunk(chunk, list(json_keys))
        for key_texts in texts.values():
            for text in key_texts:
                for line in text.split("\n"):
                    if line and not line.isspace():
                        yield line


def train_tokenizer(inputs: Sequence[str], model_prefix: str, vocab_size: int = 32000,
                    input_format: str = "auto", json_keys: Sequence[str] = ("text",),
                    input_sentence_size: int = 2_000_000, max_sentence_length: int = 8192,
                    character_coverage: float = 0.99995, num_threads: int = 1) -> str:
    """Train; PREFIX.model and PREFIX.vocab appear only when complete. Returns the .model path.

    Raises InputError on bad inputs or settings."""
    import sentencepiece

    if vocab_size < MIN_VOCAB:
        raise InputError(f"--vocab-size {vocab_size}: byte fallback alone needs 259 ids; use >= {MIN_VOCAB}")
    expand_inputs(list(inputs), input_format)  # fail on missing inputs before training
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    # SentencePiece writes PREFIX.model and PREFIX.vocab itself: train into a staging directory
    # beside the outputs, then move each file into place atomically.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{os.path.basename(model_prefix)}.") as staging:
        tmp_prefix = os.path.join(staging, "tok")
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter_lines(inputs, input_format, json_keys),
            model_prefix=tmp_prefix,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            character_coverage=character_coverage,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=max_sentence_length,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            hard_vocab_limit=False,  # a small corpus yields fewer pieces instead of failing
            num_threads=num_threads,
            minloglevel=2,
        )
        for ext in ("model", "vocab"):
            with io.atomic_path(f"{model_prefix}.{ext}") as tmp:
                shutil.move(f"{tmp_prefix}.{ext}", tmp)
    return f"{model_prefix}.model"
