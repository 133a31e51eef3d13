"""Export a trained `PatchGPTModel` as a Hugging Face `LlamaForCausalLM` directory.

    from megatron_patch.export import export_hf
    export_hf(model, model_cfg, "runs/x/hf", tokenizer_model="tok/spm.model")

`model` is an unwrapped PatchGPTModel (or GPTModel) built at TP=1, PP=1 with its weights loaded
(`tools/convert_checkpoint.py --to hf` does that and calls this). The directory gets
config.json, model.safetensors and, with `tokenizer_model`, the tokenizer files
(megatron_patch/export/tokenizer.py). It appears only when complete (`io.atomic_dir`), so a
failed export leaves nothing behind.

The tensor and config correspondence lives in `export/hf_keys.py` (shared with the import).
The logits of real tokens are identical; the export keeps only the `model_cfg.vocab_size` real
vocabulary rows, so the HF model can never emit a padding id, and its softmax normaliser
differs from megatron's only by the mass on padding rows (never targets in training, so driven
towards zero probability). A patch model (K > 1) has exactly the token model's parameters; its
export is the same mapping, and the HF model runs it at token level.
"""
import os
from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F

from megatron_patch import io
from megatron_patch.export import hf_keys


class ExportError(ValueError):
    """The model cannot be expressed as a Hugging Face Llama checkpoint."""


def _unwrap(model):
    # DDP / Float16Module wrappers keep the model in `.module`.
    while not hasattr(model, "decoder") and hasattr(model, "module"):
        model = model.module
    return model


def check_exportable(model, model_cfg) -> None:
    """Raise ExportError naming every feature of `model` that HF Llama cannot represent."""
    cfg = model.config
    problems = []
    if not (getattr(model, "pre_process", False) and getattr(model, "post_process", False)):
        problems.append("model holds one pipeline stage only; build it at PP=1 (pre_process and post_process)")
    if cfg.tensor_model_parallel_size != 1 or cfg.pipeline_model_parallel_size != 1:
        problems.append(
            f"model is split TP={cfg.tensor_model_parallel_size} PP={cfg.pipeline_model_parallel_size}; "
            "load the checkpoint at TP=1 PP=1 first (dist checkpoints reshard on load)"
        )
    if cfg.normalization != "RMSNorm":
        problems.append(f"normalization={cfg.normalization!r} (HF Llama uses RMSNorm)")
    if not cfg.gated_linear_unit or cfg.activation_func is not F.silu:
        problems.append("MLP is not SwiGLU (needs gated_linear_unit=True and activation_func=F.silu)")
    if cfg.add_bias_linear or cfg.add_qkv_bias:
        problems.append("linear biases (HF Llama export here assumes add_bias_linear=add_qkv_bias=False)")
    if getattr(cfg, "qk_layernorm", False):
        problems.append("qk_layernorm=True (Llama has no query/key norm)")
    if getattr(cfg, "num_moe_experts", None):
        problems.append("mixture-of-experts layers")
    if getattr(cfg, "multi_latent_attention", False):
        problems.append("multi-latent attention")
    if getattr(model, "position_embedding_type", "rope") != "rope":
        problems.append(f"position_embedding_type={model.position_embedding_type!r} (Llama uses RoPE)")
    rope = getattr(model, "rotary_pos_emb", None)
    if rope is not None:
        if getattr(rope, "rotary_interleaved", False) or getattr(cfg, "rotary_interleaved", False):
            problems.append("interleaved RoPE (HF Llama rotates halves)")
        if getattr(rope, "seq_len_interpolation_factor", None):
            problems.append("RoPE sequence-length interpolation")
        head_dim = cfg.kv_channels
        if rope.inv_freq.numel() * 2 != head_dim:
            problems.append(f"partial rotary embedding ({rope.inv_freq.numel() * 2} of {head_dim} channels)")
        expected = 1.0 / (model_cfg.rotary_base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        if rope.inv_freq.numel() * 2 == head_dim and not torch.allclose(rope.inv_freq.float().cpu(), expected, rtol=1e-5):
            problems.append(f"RoPE frequencies do not match rotary_base={model_cfg.rotary_base}")
    if getattr(model, "mtp_process", False):
        problems.append("multi-token-prediction layers")
    for name, mine, theirs in (
        ("num_layers", model_cfg.num_layers, cfg.num_layers),
        ("hidden_size", model_cfg.hidden_size, cfg.hidden_size),
        ("ffn_hidden_size", model_cfg.ffn_hidden_size, cfg.ffn_hidden_size),
        ("num_attention_heads", model_cfg.num_attention_heads, cfg.num_attention_heads),
        ("num_query_groups", model_cfg.num_query_groups or model_cfg.num_attention_heads, cfg.num_query_groups),
    ):
        if mine != theirs:
            problems.append(f"model_cfg.{name}={mine} but the model was built with {theirs}")
    if model_cfg.tie_embeddings != bool(getattr(model, "share_embeddings_and_output_weights", False)):
        problems.append("model_cfg.tie_embeddings disagrees with the model's share_embeddings_and_output_weights")
    if problems:
        raise ExportError("cannot export to HF Llama:\n  - " + "\n  - ".join(problems))


def megatron_to_hf_state_dict(model, model_cfg) -> Dict[str, torch.Tensor]:
    """HF Llama tensors (names -> fresh contiguous CPU tensors) from a TP1/PP1 megatron model."""
    model = _unwrap(model)
    check_exportable(model, model_cfg)
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    h, V = model_cfg.hidden_size, model_cfg.vocab_size

    def take(key, kind):
        names = [key]
        short = key.split(".", 3)[-1] if key.startswith("decoder.layers.") else None
        if short in hf_keys.TE_NORM_NAMES:  # a Transformer Engine model fuses the norm
            names.append(key[: -len(short)] + hf_keys.TE_NORM_NAMES[short])
        found = [n for n in names if n in sd]
        if len(found) != 1:
            raise ExportError(f"expected exactly one of {names} in the megatron state dict, found {found}")
        t = sd.pop(found[0]).detach().to("cpu")
        if kind == "vocab":
            if t.dim() != 2 or t.shape[1] != h or t.shape[0] < V:
                raise ExportError(f"{key} has shape {tuple(t.shape)}; expected (>= vocab_size={V}, {h})")
        elif tuple(t.shape) != hf_keys.megatron_shape(model_cfg, kind, key, 0):
            raise ExportError(f"{found[0]} has shape {tuple(t.shape)}, expected "
                              f"{hf_keys.megatron_shape(model_cfg, kind, key, 0)}")
        return t

    out = hf_keys.to_hf(take, model_cfg)
    if model_cfg.tie_embeddings and hf_keys.OUTPUT[0] in sd:  # tied, yet stored (a last stage's copy)
        if not torch.equal(take(hf_keys.OUTPUT[0], "vocab")[:V], out["model.embed_tokens.weight"]):
            raise ExportError("tie_embeddings=True but output_layer.weight differs from the input embedding")
    if sd:
        raise ExportError(f"parameters with no HF Llama counterpart: {sorted(sd)}")
    # Fresh storage per tensor: safetensors refuses views that share memory.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in out.items()}


def hf_config(model_cfg, dtype: torch.dtype, bos_token_id=None, eos_token_id=None, pad_token_id=None,
              max_positions: Optional[int] = None) -> dict:
    """config.json contents for LlamaForCausalLM (readable by transformers 4.x and 5.x).

    max_positions: max_position_embeddings when model_cfg leaves it None (the run's longest stage)."""
    cfg = {hf: getattr(model_cfg, field) for field, hf in hf_keys.CONFIG_FIELDS}
    cfg["num_key_value_heads"] = model_cfg.num_query_groups or model_cfg.num_attention_heads
    cfg["max_position_embeddings"] = model_cfg.max_position_embeddings or max_positions
    cfg["tie_word_embeddings"] = bool(model_cfg.tie_embeddings)
    theta = float(model_cfg.rotary_base)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **cfg,
        "head_dim": model_cfg.hidden_size // model_cfg.num_attention_heads,
        "hidden_act": "silu",
        # transformers < 5 reads rope_theta; 5.x reads rope_parameters (and accepts rope_theta).
        "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": str(dtype).replace("torch.", ""),
    }


HF_EXTRA = "megatron-patch[hf]"
"""The setup.py extra that installs what the Hugging Face export and import need."""


def check_installed(export: bool) -> None:
    """ValueError naming the extra unless the packages of the Hugging Face export (`export`: safetensors,
    tokenizers, protobuf for a sentencepiece tokenizer) or import (safetensors) are installed:
    checked at start, before a model is loaded or anything is written."""
    import importlib

    needed = ("safetensors", "tokenizers", "google.protobuf") if export else ("safetensors",)
    missing = []
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name.split(".")[0])
    if missing:
        what = "--to hf (the Hugging Face export)" if export else "--from hf (the Hugging Face import)"
        raise ValueError(f"{what} needs {', '.join(missing)}, not installed: pip install '{HF_EXTRA}'")


def export_hf(
    model,
    model_cfg,
    out_dir: Union[str, os.PathLike],
    tokenizer_model: Optional[Union[str, os.PathLike]] = None,
    dtype: Optional[torch.dtype] = None,
    overwrite: bool = False,
    tokenizer_add_bos: bool = False,
    max_positions: Optional[int] = None,
) -> Path:
    """Write `out_dir` as a HF Llama checkpoint of `model`; returns the directory.

    tokenizer_model: a sentencepiece .model to ship beside the weights (tokenizer.model plus
        HF tokenizer files); its size must equal model_cfg.vocab_size.
    dtype: tensor dtype on disk (default: the model's parameter dtype).
    overwrite: replace an existing non-empty out_dir (otherwise that is an error).
    tokenizer_add_bos: whether the HF tokenizer prepends BOS (match how the training data was built).
    max_positions: config.json's max_position_embeddings when model_cfg leaves it None.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; remove it or pass overwrite=True")
    if tokenizer_model is not None and not Path(tokenizer_model).exists():
        raise FileNotFoundError(f"tokenizer model {tokenizer_model} does not exist")

    tensors = megatron_to_hf_state_dict(model, model_cfg)
    if dtype is None:
        dtype = tensors["model.embed_tokens.weight"].dtype
    tensors = {k: v.to(dtype) for k, v in tensors.items()}

    special = {}
    if tokenizer_model is not None:
        from megatron_patch.export.tokenizer import sentencepiece_special_ids

        special = sentencepiece_special_ids(tokenizer_model, model_cfg.vocab_size)

    with io.atomic_dir(str(out_dir), overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        io.write_json(str(tmp / "config.json"), hf_config(model_cfg, dtype, max_positions=max_positions, **special))
        io.write_json(str(tmp / "generation_config.json"), {k: v for k, v in special.items() if v is not None})
        if tokenizer_model is not None:
            from megatron_patch.export.tokenizer import write_hf_tokenizer

            write_hf_tokenizer(tokenizer_model, tmp, add_bos_token=tokenizer_add_bos)
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():  # some writers create private files; the export is ordinary data
            os.chmod(f, 0o666 & ~umask)
    return out_dir
