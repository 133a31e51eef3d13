"""The one correspondence between this product's model and Hugging Face's `LlamaForCausalLM`.

Both directions read the tables below: the export (`export/hf.py`, megatron -> HF) and the
import (`export/hf_import.py`, HF -> megatron), so the two cannot drift apart.

Layout facts the mapping rests on (checked numerically against transformers in
tests/unit/export/):
- megatron-core's fused `linear_qkv` stores, for each of the `num_query_groups` groups, that
  group's query heads, then its key head, then its value head; HF Llama keeps q/k/v separate,
  and query head j uses key/value head j // (heads / groups) in both.
- `linear_fc1` is [gate; up] stacked along the output dim; SwiGLU = silu(gate) * up in both.
- megatron's default RoPE (`rotary_interleaved=False`) rotates halves like HF's `rotate_half`,
  so q/k rows need no permutation.
- Vocabulary: megatron pads the embedding and output tables to `padded_vocab_size` rows; HF
  holds exactly `vocab_size`. Export keeps the first `vocab_size` rows; import appends zero rows.
- Norms: a model built from the local / sdpa specs has `input_layernorm` / `pre_mlp_layernorm`
  modules; Transformer Engine fuses them into the next linear as `layer_norm_weight`
  (`TE_NORM_NAMES`, megatron_patch/checkpoint/layout.py's). Both are accepted on export; import
  writes the local names.
"""
from typing import Callable, Dict, Iterator, Tuple

import torch

from megatron_patch.checkpoint.layout import TE_NORM_NAMES  # noqa: F401 (export/hf.py reads it here)

# ModelConfig field <-> config.json key.
CONFIG_FIELDS: Tuple[Tuple[str, str], ...] = (
    ("num_layers", "num_hidden_layers"),
    ("hidden_size", "hidden_size"),
    ("ffn_hidden_size", "intermediate_size"),
    ("num_attention_heads", "num_attention_heads"),
    ("num_query_groups", "num_key_value_heads"),  # None (one per head) <-> num_attention_heads
    ("vocab_size", "vocab_size"),
    ("max_position_embeddings", "max_position_embeddings"),
    ("norm_epsilon", "rms_norm_eps"),
    ("rotary_base", "rope_theta"),
    ("tie_embeddings", "tie_word_embeddings"),
    ("init_method_std", "initializer_range"),
)

# Tensors: (megatron state-dict name, HF names, kind). Layer names are relative to
# `decoder.layers.{i}.` and `model.layers.{i}.`. Kinds:
#   copy   the same tensor
#   vocab  HF = the first vocab_size rows of megatron's padded table
#   qkv    megatron's per-group [q heads..., k, v] rows <-> q_proj, k_proj, v_proj
#   fc1    megatron's [gate; up] <-> gate_proj, up_proj
EMBEDDING = ("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab")
OUTPUT = ("output_layer.weight", ("lm_head.weight",), "vocab")  # untied models only
FINAL_NORM = ("decoder.final_layernorm.weight", ("model.norm.weight",), "copy")
LAYER_TENSORS = (
    ("input_layernorm.weight", ("input_layernorm.weight",), "copy"),
    ("pre_mlp_layernorm.weight", ("post_attention_layernorm.weight",), "copy"),
    ("self_attention.linear_qkv.weight",
     ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), "qkv"),
    ("self_attention.linear_proj.weight", ("self_attn.o_proj.weight",), "copy"),
    ("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), "fc1"),
    ("mlp.linear_fc2.weight", ("mlp.down_proj.weight",), "copy"),
)
# HF buffers that some checkpoints store and that carry no weights (RoPE frequencies).
HF_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class MappingError(ValueError):
    """A tensor is missing or has the wrong shape for the model config."""


def tensor_names(model_cfg) -> Iterator[Tuple[str, Tuple[str, ...], str]]:
    """Every (megatron name, HF names, kind) of a model, layers expanded."""
    yield EMBEDDING
    for i in range(model_cfg.num_layers):
        for meg, hf, kind in LAYER_TENSORS:
            yield f"decoder.layers.{i}.{meg}", tuple(f"model.layers.{i}.{n}" for n in hf), kind
    yield FINAL_NORM
    if not model_cfg.tie_embeddings:
        yield OUTPUT


def _dims(model_cfg):
    h, heads = model_cfg.hidden_size, model_cfg.num_attention_heads
    groups = model_cfg.num_query_groups or heads
    return h, heads, groups, h // heads, model_cfg.ffn_hidden_size


def hf_shapes(model_cfg, kind: str, meg_name: str) -> Tuple[Tuple[int, ...], ...]:
    """Shapes of the HF tensors of one table row."""
    h, heads, groups, d, f = _dims(model_cfg)
    if kind == "vocab":
        return ((model_cfg.vocab_size, h),)
    if kind == "qkv":
        return ((heads * d, h), (groups * d, h), (groups * d, h))
    if kind == "fc1":
        return ((f, h), (f, h))
    if meg_name.endswith("linear_proj.weight"):
        return ((h, heads * d),)
    if meg_name.endswith("linear_fc2.weight"):
        return ((h, f),)
    return ((h,),)  # norms


def megatron_shape(model_cfg, kind: str, meg_name: str, rows: int) -> Tuple[int, ...]:
    """Shape of the megatron tensor of one table row (`rows`: the padded vocabulary)."""
    h, heads, groups, d, f = _dims(model_cfg)
    if kind == "vocab":
        return (rows, h)
    if kind == "qkv":
        return ((heads + 2 * groups) * d, h)
    if kind == "fc1":
        return (2 * f, h)
    return hf_shapes(model_cfg, kind, meg_name)[0]


def split(model_cfg, kind: str, t: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Megatron tensor -> its HF tensors."""
    h, heads, groups, d, f = _dims(model_cfg)
    if kind == "vocab":
        return (t[: model_cfg.vocab_size],)
    if kind == "qkv":
        per = heads // groups
        g = t.reshape(groups, per + 2, d, h)
        return (g[:, :per].reshape(heads * d, h), g[:, per].reshape(groups * d, h),
                g[:, per + 1].reshape(groups * d, h))
    if kind == "fc1":
        return (t[:f], t[f:])
    return (t,)


def merge(model_cfg, kind: str, parts: Tuple[torch.Tensor, ...], rows: int) -> torch.Tensor:
    """HF tensors -> the megatron tensor (`rows`: the padded vocabulary); the inverse of split."""
    h, heads, groups, d, f = _dims(model_cfg)
    if kind == "vocab":
        (t,) = parts
        if rows == t.shape[0]:
            return t
        return torch.cat([t, t.new_zeros(rows - t.shape[0], h)])
    if kind == "qkv":
        q, k, v = parts
        per = heads // groups
        return torch.cat([q.reshape(groups, per, d, h), k.reshape(groups, 1, d, h),
                          v.reshape(groups, 1, d, h)], dim=1).reshape((heads + 2 * groups) * d, h)
    if kind == "fc1":
        return torch.cat(parts)
    (t,) = parts
    return t


def to_hf(take: Callable[[str, str], torch.Tensor], model_cfg) -> Dict[str, torch.Tensor]:
    """HF tensors of a model; `take(megatron name, kind)` returns (and consumes) one tensor."""
    out = {}
    for meg, hf_names, kind in tensor_names(model_cfg):
        for name, t, shape in zip(hf_names, split(model_cfg, kind, take(meg, kind)),
                                  hf_shapes(model_cfg, kind, meg)):
            if tuple(t.shape) != shape:  # split of a tensor of the right shape cannot fail
                raise MappingError(f"{name}: shape {tuple(t.shape)}, expected {shape}")
            out[name] = t
    return out


def from_hf(get: Callable[[str], torch.Tensor], model_cfg, rows: int) -> Iterator[Tuple[str, torch.Tensor]]:
    """(megatron name, tensor) of a model; `get(HF name)` returns one HF tensor. Lazy, so a
    caller can copy each into place and drop it (peak memory: one tensor, not a model)."""
    for meg, hf_names, kind in tensor_names(model_cfg):
        parts = []
        for name, shape in zip(hf_names, hf_shapes(model_cfg, kind, meg)):
            t = get(name)
            if tuple(t.shape) != shape:
                raise MappingError(f"{name} has shape {tuple(t.shape)}; the config.json describes {shape}")
            parts.append(t)
        yield meg, merge(model_cfg, kind, tuple(parts), rows)
