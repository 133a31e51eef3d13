"""Checkpoint conversion: weights only (`token`), to Hugging Face Llama (`hf`), and from a
Hugging Face Llama directory (`from_hf`). SRC is only read.

- token: model weights of any checkpoint (full or weights-only, saved at any TP/PP) written as a
  Megatron `release` checkpoint, `DST/release/` + `DST/latest_checkpointed_iteration.txt` =
  "release": no optimizer, scheduler, RNG or step. It loads into the token-level model at any
  TP/PP (dist_checkpointing stores global shapes). This is the hand-over between the stages.
- hf: the weights in a TP1/PP1 model on CPU, then `megatron_patch.export.hf.export_hf`.
- from_hf: a `LlamaForCausalLM` directory as a release checkpoint (`export/hf_import.py`).

Needs megatron-core process groups for `parallel` (tools/convert_checkpoint.py sets up a world
of one; tools/pretrain.py converts in place with its own layout).
"""
import dataclasses
import os

import torch
from megatron.core import parallel_state

from megatron_patch.training import checkpointing as ckpt
from megatron_patch.training.builders import build_chunks
from megatron_patch.training.rundir import checkpoint_root, resolve_checkpoint


def _saved_dtype(cfg) -> torch.dtype:
    return torch.bfloat16 if cfg.train.bf16 else torch.float32


def expected_model(config_yaml: str, tokenizer_model=None):
    """The ModelConfig a YAML run config describes. A run takes its vocabulary from the
    tokenizer, so vocab_size is compared only when the tokenizer is given (None = not checked)."""
    from megatron_patch.training.config import load_yaml, model_from_dict

    # Only the model section: the YAML's run fields (data, budget) are not needed to compare shapes.
    model, _ = model_from_dict((load_yaml(config_yaml) or {}).get("model") or {})
    if tokenizer_model:
        from megatron_patch.data import load_tokenizer

        model.vocab_size = load_tokenizer(tokenizer_model).vocab_size
    else:
        model.vocab_size = None
    return model


def load_model_for(path: str, parallel, patch_size: int = 1, dtype=None, expect=None,
                   transformer_impl: str = "auto"):
    """(config, unwrapped chunks with the checkpoint's weights) at the current layout `parallel`.

    expect: a ModelConfig the checkpoint must match (CheckpointError otherwise).
    transformer_impl: the layers to build; every implementation stores the same tensors, so a
    checkpoint trained with Transformer Engine loads where only sdpa exists ("auto")."""
    if expect is not None:
        ckpt.check_model_matches(path, expect)
    cfg = ckpt.checkpoint_config(path)
    cfg.parallel = dataclasses.replace(parallel)
    cfg.model.transformer_impl = transformer_impl
    chunks = build_chunks(cfg, patch_size, dtype or _saved_dtype(cfg))
    ckpt.load_weights(path, chunks, cfg.model)
    return cfg, chunks


def _check_paths(path: str, dst: str) -> None:
    """DST must be apart from the checkpoint directory that holds `path` (it is only read)."""
    root = checkpoint_root(path)
    a, b = os.path.realpath(root), os.path.realpath(dst)
    if a == b or b.startswith(a + os.sep) or a.startswith(b + os.sep):
        raise ValueError(f"--save {dst} must not be inside (or contain) the checkpoint directory {root}: "
                         "the source is never modified")


def convert_to_token(src: str, dst: str, parallel, expect=None, allow_unfinished: bool = False) -> str:
    """Weights-only release checkpoint of SRC at DST (all ranks). Returns DST/release.

    SRC must be a completed stage (its final checkpoint) unless `allow_unfinished`."""
    path = resolve_checkpoint(src)
    _check_paths(path, dst)
    ckpt.require_completed(path, allow_unfinished, f"--to token from {src}")
    if os.path.isdir(dst) and os.listdir(dst):
        raise ValueError(f"--save {dst} already exists and is not empty; remove it or pick another")
    cfg, chunks = load_model_for(path, parallel, expect=expect)
    cfg.train.stage = "token"
    return ckpt.save_checkpoint(dst, cfg, chunks)


def convert_to_hf(src: str, dst: str, tokenizer_model=None, expect=None) -> str:
    """Hugging Face export of SRC's weights (a world of one: TP1/PP1 on CPU)."""
    from megatron_patch.config import ParallelConfig
    from megatron_patch.export.hf import export_hf

    if torch.distributed.get_world_size() != 1 or parallel_state.get_tensor_model_parallel_world_size() != 1:
        raise ValueError("--to hf runs in one process (TP1/PP1); launch it with python, not torchrun")
    path = resolve_checkpoint(src)
    _check_paths(path, dst)
    cfg, chunks = load_model_for(path, ParallelConfig(), expect=expect)
    if tokenizer_model and not os.path.exists(tokenizer_model):
        raise ValueError(f"--tokenizer-model {tokenizer_model} not found")
    tok = tokenizer_model or cfg.data.tokenizer_model  # the run's, when it is still there
    if not tok and getattr(cfg.data, "vocab_file", None) and getattr(cfg.data, "merge_file", None):
        from megatron_patch.data.tokenizer import GPT2BPEFiles  # GPT2BPETokenizer: its two files

        tok = GPT2BPEFiles(cfg.data.vocab_file, cfg.data.merge_file)
    out = export_hf(chunks[0], cfg.model, dst, tokenizer_model=tok if tok and os.path.exists(tok) else None,
                    max_positions=_longest_positions(cfg))
    return str(out)


def _longest_positions(cfg) -> int:
    """Transformer positions of the run's longest stage (set by preflight; derived for configs
    written before it was)."""
    if cfg.model.max_position_embeddings:
        return cfg.model.max_position_embeddings
    t = cfg.train
    patch = (t.patch_seq_length or t.seq_length * t.patch_size) // t.patch_size
    return max(t.seq_length, patch if t.patch_size > 1 else 0)


def convert_from_hf(src: str, dst: str, expect=None) -> str:
    """Release checkpoint at DST of the Hugging Face Llama directory SRC (a world of one)."""
    from megatron_patch.export.hf_import import import_hf

    if torch.distributed.get_world_size() != 1:
        raise ValueError("--from hf runs in one process; launch it with python, not torchrun")
    a, b = os.path.realpath(src), os.path.realpath(dst)
    if a == b or b.startswith(a + os.sep) or a.startswith(b + os.sep):
        raise ValueError(f"--save {dst} must be apart from the Hugging Face directory {src} (it is only read)")
    return import_hf(src, dst, expect=expect)
