"""An independent plain-PyTorch LLaMA with the patch-level input and loss (fp32, CPU).

Reads a TP=1 megatron-core state dict; written from the equations in docs/design.md, not from
megatron-core's modules, so it can catch mistakes in how ours are wired together.
"""
import math

import torch
import torch.nn.functional as F


def _rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, base):
    # x: [b, T, heads, d]; non-interleaved halves (rotate_half), positions 0..T-1.
    T, d = x.shape[1], x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)
    ang = torch.cat([ang, ang], dim=-1)[None, :, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * ang.cos() + torch.cat([-x2, x1], dim=-1) * ang.sin()


def _find(sd, prefix, *suffixes):
    for s in suffixes:
        if prefix + s in sd:
            return sd[prefix + s]
    raise KeyError(f"none of {[prefix + s for s in suffixes]} in state dict")


def reference_forward(sd, cfg, input_ids, patch_size, labels=None):
    """Logits [b, T, V] or per-target loss [b, T*K] of a LLaMA whose positions are K-token patches."""
    K = patch_size
    b, s = input_ids.shape
    T = s // K
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    groups = cfg.num_query_groups or heads
    d = h // heads
    eps = cfg.norm_epsilon

    x = sd["embedding.word_embeddings.weight"][input_ids]  # [b, T*K, h]
    x = x.view(b, T, K, h).mean(dim=2)  # the patch embedding
    for i in range(cfg.num_layers):
        p = f"decoder.layers.{i}."
        y = _rmsnorm(x, _find(sd, p, "input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"), eps)
        qkv = (y @ sd[p + "self_attention.linear_qkv.weight"].T).view(b, T, groups, heads // groups + 2, d)
        q = qkv[..., : heads // groups, :].reshape(b, T, heads, d)
        k, v = qkv[..., -2, :], qkv[..., -1, :]
        q, k = _rope(q, cfg.rotary_base), _rope(k, cfg.rotary_base)
        k = k.repeat_interleave(heads // groups, dim=2)
        v = v.repeat_interleave(heads // groups, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)
        attn = scores.masked_fill(causal, float("-inf")).softmax(-1)
        o = torch.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, T, h)
        x = x + o @ sd[p + "self_attention.linear_proj.weight"].T
        y = _rmsnorm(x, _find(sd, p, "pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"), eps)
        gate, up = (y @ sd[p + "mlp.linear_fc1.weight"].T).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ sd[p + "mlp.linear_fc2.weight"].T
    x = _rmsnorm(x, sd["decoder.final_layernorm.weight"], eps)
    out_w = sd.get("output_layer.weight", sd["embedding.word_embeddings.weight"])
    logits = x @ out_w.T  # [b, T, V]
    if labels is None:
        return logits
    logp = logits.log_softmax(-1)  # one normaliser per patch position
    targets = labels.view(b, T, K)
    return -logp.gather(-1, targets).reshape(b, T * K)
