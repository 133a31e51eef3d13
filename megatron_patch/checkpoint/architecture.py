"""The model a checkpoint holds: comparing architectures, and Megatron-LM GPT checkpoints.

A checkpoint of this product describes its model in config.yaml (read by
training/checkpointing.py, which owns the run config); a Megatron-LM torch_dist checkpoint has
no config.yaml but keeps its `args` in common.pt, read here.
"""
import dataclasses
import os

import torch

from megatron_patch.checkpoint.layout import CheckpointError

_ARCH_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "vocab_size", "tie_embeddings", "rotary_base", "norm_epsilon")


def model_differences(saved, requested, skip=()) -> dict:
    """{field: (saved, requested)} of the architecture fields that differ (None requested = any)."""
    def value(m, f):
        return (m.num_query_groups or m.num_attention_heads) if f == "num_query_groups" else getattr(m, f)

    return {f: (value(saved, f), value(requested, f)) for f in _ARCH_FIELDS
            if f not in skip and value(requested, f) is not None and value(saved, f) != value(requested, f)}


def megatron_lm_args(path: str):
    """The `args` Namespace a Megatron-LM checkpoint keeps in its common state, None if there is
    none. Megatron-LM's GPT checkpoints (torch_dist) have no config.yaml; their args describe
    the model (megatron-core registers argparse.Namespace as safe to unpickle)."""
    common = os.path.join(path, "common.pt")
    if not os.path.isfile(common):
        return None
    try:
        state = torch.load(common, map_location="cpu")
    except Exception as err:
        raise CheckpointError(f"checkpoint {path}: common.pt is unreadable ({type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0][:300] if str(err).strip() else ''})") from None
    args = state.get("args") if isinstance(state, dict) else None
    return args if args is not None and hasattr(args, "num_layers") else None


def megatron_lm_model_config(args, path: str = "the checkpoint"):
    """The ModelConfig a Megatron-LM GPT checkpoint's args describe; CheckpointError lists every
    feature this product's model (LLaMA-style: RMSNorm, SwiGLU, plain RoPE, no biases) lacks."""
    from megatron_patch.config import ModelConfig

    def a(name, default=None):
        return getattr(args, name, default)

    checks = (
        (a("position_embedding_type", "rope") == "rope", f"position_embedding_type={a('position_embedding_type')!r}"),
        (a("swiglu", False) and not a("squared_relu") and not a("quick_geglu"), "an MLP other than SwiGLU (--swiglu)"),
        (a("normalization", "LayerNorm") == "RMSNorm", f"normalization={a('normalization')!r}"),
        (not a("apply_layernorm_1p"), "apply_layernorm_1p"),
        (not a("add_bias_linear") and not a("add_qkv_bias"), "linear biases (add_bias_linear / add_qkv_bias)"),
        (not a("qk_layernorm"), "qk_layernorm"),
        (not a("num_experts"), "mixture of experts (num_experts)"),
        (not a("multi_latent_attention"), "multi-latent attention"),
        (a("rotary_percent", 1.0) == 1.0, f"partial rotary embedding (rotary_percent={a('rotary_percent')})"),
        (not a("rotary_interleaved"), "interleaved RoPE"),
        (not a("use_rope_scaling"), "RoPE scaling (use_rope_scaling)"),
        (not a("rotary_seq_len_interpolation_factor"), "RoPE sequence-length interpolation"),
        (not a("mtp_num_layers"), "multi-token-prediction layers"),
        (a("heterogeneous_layers_config_path") is None, "heterogeneous layers"),
        (a("hybrid_layer_pattern") is None and a("hybrid_override_pattern") is None, "hybrid (Mamba) layers"),
        (a("window_size") is None, "sliding-window attention"),
        (a("kv_channels") in (None, a("hidden_size", 0) // max(a("num_attention_heads", 1) or 1, 1)),
         f"kv_channels={a('kv_channels')} other than hidden_size / num_attention_heads"),
    )
    problems = [why for ok, why in checks if not ok]
    missing = [n for n in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                           "padded_vocab_size") if not isinstance(a(n), int)]
    if missing:
        problems.append(f"args lack {missing}")
    if problems:
        raise CheckpointError(f"Megatron-LM checkpoint {path} has features this model does not support: "
                              + "; ".join(problems))
    gqa = bool(a("group_query_attention")) and a("num_query_groups") not in (None, a("num_attention_heads"))
    fields = dict(
        num_layers=a("num_layers"), hidden_size=a("hidden_size"), ffn_hidden_size=a("ffn_hidden_size"),
        num_attention_heads=a("num_attention_heads"), num_query_groups=a("num_query_groups") if gqa else None,
        vocab_size=a("padded_vocab_size"), make_vocab_size_divisible_by=1,
        max_position_embeddings=a("max_position_embeddings"), rotary_base=a("rotary_base", 10000),
        norm_epsilon=a("norm_epsilon", 1e-5), tie_embeddings=not a("untie_embeddings_and_output_weights", False),
        init_method_std=a("init_method_std", 0.02),
    )
    if "group_query_attention" in {f.name for f in dataclasses.fields(ModelConfig)}:
        fields["group_query_attention"] = gqa
    try:
        return ModelConfig(**fields)
    except ValueError as err:
        raise CheckpointError(f"Megatron-LM checkpoint {path}: its args are not a valid model ({err})") from None
