"""Export a trained `PatchGPTModel` as a Hugging Face `LlamaForCausalLM` directory.

    from megatron_patch.export import export_hf
    export_hf(model, model_cfg, "runs/x/hf", tokenizer_model="tok/spm.model")

`model` is an unwrapped PatchGPTModel (or GPTModel) built at TP=1, PP=1 with its weights loaded
(`tools/convert_checkpoint.py --to hf` does that and calls this). The directory gets
config.json, model.safetensors and, with `tokenizer_model`, the tokenizer files
(megatron_patch/export/tokenizer.py). It is written to a temporary sibling and renamed into
place only when complete, so a failed export leaves nothing behind.

Layout facts the mapping rests on (checked numerically in tests/test_export_hf.py):
- megatron-core's fused `linear_qkv` stores, for each of the `num_query_groups` groups, that
  group's query heads, then its key head, then its value head; HF Llama keeps q/k/v separate,
  and query head j uses key/value head j // (heads / groups) in both.
- `linear_fc1` is [gate; up] stacked along the output dim; SwiGLU = silu(gate) * up in both.
- megatron's default RoPE (`rotary_interleaved=False`) rotates halves like HF's `rotate_half`,
  so q/k rows need no permutation.
- Vocabulary: megatron pads it (make_vocab_size_divisible_by x TP). The export keeps only the
  `model_cfg.vocab_size` real rows, so `config.vocab_size` equals the tokenizer's size and the
  model can never emit a padding id. The logits of real tokens are identical; softmax
  normalisers differ only by the mass on padding rows, which never occur as targets in
  training and so are driven towards zero probability.
- A patch model (K > 1) has exactly the token model's parameters; its export is the same
  mapping, and the HF model runs it at token level.
"""
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F

# Norm weights by key suffix within a layer, for every layer spec we build from:
# local / sdpa specs keep separate norm modules; Transformer Engine fuses the norm into the
# following linear and stores it as `layer_norm_weight`.
_ATTN_NORM_SUFFIXES = ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight")
_MLP_NORM_SUFFIXES = ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight")
_LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


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
    h = model_cfg.hidden_size
    heads = model_cfg.num_attention_heads
    groups = model_cfg.num_query_groups or heads
    head_dim = h // heads
    per_group = heads // groups
    V = model_cfg.vocab_size

    def take(key, shape=None):
        if key not in sd:
            raise ExportError(f"megatron state dict has no {key!r}")
        t = sd.pop(key)
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise ExportError(f"{key} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return t.detach().to("cpu")

    def vocab_rows(key):
        t = take(key)
        if t.dim() != 2 or t.shape[1] != h or t.shape[0] < V:
            raise ExportError(f"{key} has shape {tuple(t.shape)}; expected (>= vocab_size={V}, {h})")
        return t[:V]

    out = {"model.embed_tokens.weight": vocab_rows("embedding.word_embeddings.weight")}
    if not model_cfg.tie_embeddings:
        out["lm_head.weight"] = vocab_rows("output_layer.weight")
    elif "output_layer.weight" in sd:  # tied, yet stored (e.g. a last pipeline stage's copy)
        if not torch.equal(vocab_rows("output_layer.weight"), out["model.embed_tokens.weight"]):
            raise ExportError("tie_embeddings=True but output_layer.weight differs from the input embedding")
    out["model.norm.weight"] = take("decoder.final_layernorm.weight", (h,))

    by_layer: Dict[int, Dict[str, torch.Tensor]] = {}
    for key in list(sd):
        m = _LAYER_KEY.match(key)
        if m:
            by_layer.setdefault(int(m.group(1)), {})[m.group(2)] = sd.pop(key)
    if sorted(by_layer) != list(range(model_cfg.num_layers)):
        raise ExportError(f"found layers {sorted(by_layer)}, expected 0..{model_cfg.num_layers - 1}")

    for i in range(model_cfg.num_layers):
        layer = by_layer[i]
        p = f"model.layers.{i}."

        def norm(suffixes, what):
            found = [s for s in suffixes if s in layer]
            if len(found) != 1:
                raise ExportError(f"layer {i}: expected exactly one {what} norm weight among {suffixes}, found {found}")
            t = layer.pop(found[0])
            if tuple(t.shape) != (h,):
                raise ExportError(f"layer {i} {found[0]} has shape {tuple(t.shape)}, expected ({h},)")
            return t

        def lin(name, shape):
            if name not in layer:
                raise ExportError(f"layer {i}: no {name!r} in the state dict")
            t = layer.pop(name)
            if tuple(t.shape) != shape:
                raise ExportError(f"layer {i} {name} has shape {tuple(t.shape)}, expected {shape}")
            return t

        out[p + "input_layernorm.weight"] = norm(_ATTN_NORM_SUFFIXES, "attention input")
        out[p + "post_attention_layernorm.weight"] = norm(_MLP_NORM_SUFFIXES, "pre-MLP")

        qkv = lin("self_attention.linear_qkv.weight", ((heads + 2 * groups) * head_dim, h))
        qkv = qkv.view(groups, per_group + 2, head_dim, h)
        out[p + "self_attn.q_proj.weight"] = qkv[:, :per_group].reshape(heads * head_dim, h)
        out[p + "self_attn.k_proj.weight"] = qkv[:, per_group].reshape(groups * head_dim, h)
        out[p + "self_attn.v_proj.weight"] = qkv[:, per_group + 1].reshape(groups * head_dim, h)
        out[p + "self_attn.o_proj.weight"] = lin("self_attention.linear_proj.weight", (h, heads * head_dim))

        f = model_cfg.ffn_hidden_size
        fc1 = lin("mlp.linear_fc1.weight", (2 * f, h))
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = fc1[:f], fc1[f:]
        out[p + "mlp.down_proj.weight"] = lin("mlp.linear_fc2.weight", (h, f))
        if layer:
            raise ExportError(f"layer {i}: parameters with no HF Llama counterpart: {sorted(layer)}")
    if sd:
        raise ExportError(f"parameters with no HF Llama counterpart: {sorted(sd)}")
    # Fresh storage per tensor: safetensors refuses views that share memory.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in out.items()}


def hf_config(model_cfg, dtype: torch.dtype, bos_token_id=None, eos_token_id=None, pad_token_id=None) -> dict:
    """config.json contents for LlamaForCausalLM (readable by transformers 4.x and 5.x)."""
    dtype_name = str(dtype).replace("torch.", "")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": model_cfg.vocab_size,
        "hidden_size": model_cfg.hidden_size,
        "intermediate_size": model_cfg.ffn_hidden_size,
        "num_hidden_layers": model_cfg.num_layers,
        "num_attention_heads": model_cfg.num_attention_heads,
        "num_key_value_heads": model_cfg.num_query_groups or model_cfg.num_attention_heads,
        "head_dim": model_cfg.hidden_size // model_cfg.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": model_cfg.max_seq_length,
        "rms_norm_eps": model_cfg.norm_epsilon,
        "initializer_range": model_cfg.init_method_std,
        "tie_word_embeddings": bool(model_cfg.tie_embeddings),
        # transformers < 5 reads rope_theta; 5.x reads rope_parameters (and accepts rope_theta).
        "rope_theta": float(model_cfg.rotary_base),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(model_cfg.rotary_base)},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": dtype_name,
    }


def export_hf(
    model,
    model_cfg,
    out_dir: Union[str, os.PathLike],
    tokenizer_model: Optional[Union[str, os.PathLike]] = None,
    dtype: Optional[torch.dtype] = None,
    overwrite: bool = False,
    tokenizer_add_bos: bool = False,
) -> Path:
    """Write `out_dir` as a HF Llama checkpoint of `model`; returns the directory.

    tokenizer_model: a sentencepiece .model to ship beside the weights (tokenizer.model plus
        HF tokenizer files); its size must equal model_cfg.vocab_size.
    dtype: tensor dtype on disk (default: the model's parameter dtype).
    overwrite: replace an existing non-empty out_dir (otherwise that is an error).
    tokenizer_add_bos: whether the HF tokenizer prepends BOS (match how the training data was built).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; remove it or pass overwrite=True")
    if tokenizer_model is not None and not Path(tokenizer_model).is_file():
        raise FileNotFoundError(f"tokenizer model {tokenizer_model} does not exist")

    tensors = megatron_to_hf_state_dict(model, model_cfg)
    if dtype is None:
        dtype = tensors["model.embed_tokens.weight"].dtype
    tensors = {k: v.to(dtype) for k, v in tensors.items()}

    special = {}
    if tokenizer_model is not None:
        from megatron_patch.export.tokenizer import sentencepiece_special_ids

        special = sentencepiece_special_ids(tokenizer_model, model_cfg.vocab_size)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary directory
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        with open(tmp / "config.json", "w") as f:
            json.dump(hf_config(model_cfg, dtype, **special), f, indent=2)
            f.write("\n")
        with open(tmp / "generation_config.json", "w") as f:
            json.dump({k: v for k, v in special.items() if v is not None}, f, indent=2)
            f.write("\n")
        if tokenizer_model is not None:
            from megatron_patch.export.tokenizer import write_hf_tokenizer

            write_hf_tokenizer(tokenizer_model, tmp, add_bos_token=tokenizer_add_bos)
        for f in tmp.iterdir():  # some writers create private files; the export is ordinary data
            os.chmod(f, 0o666 & ~umask)
        if out_dir.exists():
            # Only reached with overwrite=True (or an empty dir): swap in the finished export.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "d")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
