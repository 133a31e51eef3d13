"""Checkpoint conversion: weights only (`token`) or Hugging Face Llama (`hf`). SRC is only read.

- token: model weights of any checkpoint (full or weights-only, saved at any TP/PP) written as a
  Megatron `release` checkpoint, `DST/release/` + `DST/latest_checkpointed_iteration.txt` =
  "release": no optimizer, scheduler, RNG or step. It loads into the token-level model at any
  TP/PP (dist_checkpointing stores global shapes). This is the hand-over between the stages.
- hf: the weights in a TP1/PP1 model on CPU, then `megatron_patch.export.hf.export_hf`.

Needs megatron-core process groups for `parallel` (tools/convert_checkpoint.py sets up a world
of one; tools/pretrain.py converts in place with its own layout).
"""
import dataclasses
import os

import torch
from megatron.core import parallel_state

from megatron_patch.training import checkpointing as ckpt
from megatron_patch.training.builders import build_chunks


def resolve_checkpoint(path: str) -> str:
    """The checkpoint named by `path`: a checkpoint dir (with the pointer), one iter_*/release
    dir, or a run directory of tools/pretrain.py (its last stage's latest checkpoint)."""
    if not os.path.exists(path):
        raise ckpt.CheckpointError(f"checkpoint {path} does not exist")
    if not os.path.isfile(os.path.join(path, ckpt.TRACKER)):
        for stage in ("token", "patch"):  # a run directory: the last stage that saved
            if os.path.isfile(os.path.join(path, stage, ckpt.TRACKER)):
                return ckpt.require_checkpoint(os.path.join(path, stage))
    if os.path.isfile(os.path.join(path, ckpt.TRACKER)):
        return ckpt.require_checkpoint(path)
    if os.path.isfile(os.path.join(path, "metadata.json")) or os.path.isfile(os.path.join(path, ckpt.CONFIG_FILE)):
        ckpt.check_complete(path)
        return path
    return ckpt.require_checkpoint(path)  # raises with the "no pointer" message


def _saved_dtype(cfg) -> torch.dtype:
    return torch.bfloat16 if cfg.train.bf16 else torch.float32


def expected_model(config_yaml: str, tokenizer_model=None):
    """The ModelConfig a YAML run config describes. A run takes its vocabulary from the
    tokenizer, so vocab_size is compared only when the tokenizer is given (None = not checked)."""
    from megatron_patch.training.config import config_from_dict, load_yaml

    model = config_from_dict(load_yaml(config_yaml)).model
    if tokenizer_model:
        from megatron_patch.data import load_tokenizer

        model.vocab_size = load_tokenizer(tokenizer_model).vocab_size
    else:
        model.vocab_size = None
    return model


def load_model_for(path: str, parallel, patch_size: int = 1, dtype=None, expect=None):
    """(config, unwrapped chunks with the checkpoint's weights) at the current layout `parallel`.

    expect: a ModelConfig the checkpoint must match (CheckpointError otherwise)."""
    if expect is not None:
        ckpt.check_model_matches(path, expect)
    cfg = ckpt.checkpoint_config(path)
    cfg.parallel = dataclasses.replace(parallel)
    chunks = build_chunks(cfg, patch_size, dtype or _saved_dtype(cfg))
    ckpt.load_weights(path, chunks, cfg.model)
    return cfg, chunks


def _check_paths(path: str, dst: str) -> None:
    """DST must be apart from the checkpoint directory that holds `path` (it is only read)."""
    root = os.path.dirname(path) if os.path.isfile(os.path.join(os.path.dirname(path), ckpt.TRACKER)) else path
    a, b = os.path.realpath(root), os.path.realpath(dst)
    if a == b or b.startswith(a + os.sep) or a.startswith(b + os.sep):
        raise ValueError(f"--save {dst} must not be inside (or contain) the checkpoint directory {root}: "
                         "the source is never modified")


def convert_to_token(src: str, dst: str, parallel, expect=None) -> str:
    """Weights-only release checkpoint of SRC at DST (all ranks). Returns DST/release."""
    path = resolve_checkpoint(src)
    _check_paths(path, dst)
    if os.path.isfile(os.path.join(dst, ckpt.TRACKER)) or (
        os.path.isdir(dst) and os.listdir(dst)
    ):
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
    if tokenizer_model and not os.path.isfile(tokenizer_model):
        raise ValueError(f"--tokenizer-model {tokenizer_model} not found")
    tok = tokenizer_model or cfg.data.tokenizer_model  # the run's, when it is still there
    out = export_hf(chunks[0], cfg.model, dst,
                    tokenizer_model=tok if tok and os.path.isfile(tok) else None)
    return str(out)
