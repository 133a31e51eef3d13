"""Core attention on `torch.nn.functional.scaled_dot_product_attention` (SDPA).

megatron-core's local spec computes attention with `DotProductAttention`: baddbmm into an
[b*np, sq, sk] score buffer, an fp32 softmax, dropout, bmm. That keeps the s x s probabilities
for backward (O(s^2) memory) and never reaches a fused kernel. `SDPAttention` is a drop-in
replacement for it in a layer spec (`...self_attention.submodules.core_attention`): same
constructor keywords, same tensor layouts, same numbers in fp32, but one SDPA call, so PyTorch
picks a flash / memory-efficient kernel (O(s) memory) on GPU and its flash kernel on CPU.

Semantics follow `DotProductAttention`:
- no mask given and a causal layer -> causal attention, passed as `is_causal=True` (never a mask
  tensor) so the flash kernels stay eligible;
- a mask given -> that mask alone decides (megatron booleans: True = masked, the opposite of
  SDPA's, so it is inverted here). A row with every key masked differs: megatron's -10000 fill
  averages all values there, SDPA returns zeros; such rows are padding and carry no loss;
- grouped-query attention: SDPA's `enable_gqa` broadcasts the K/V groups without copying them;
- dropout draws from megatron's model-parallel RNG tracker, so TP ranks drop different heads.
"""
from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide


class SDPAttention(MegatronModule):
    """Core attention: q [sq, b, np, hn], k/v [sk, b, ng, hn] -> context [sq, b, np*hn]."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Optional[ProcessGroupCollection] = None,
    ):
        super().__init__(config=config)
        unsupported = {
            "context_parallel_size > 1": config.context_parallel_size > 1,
            f"softmax_type={config.softmax_type!r}": config.softmax_type != "vanilla",
            "window_size (sliding-window attention)": config.window_size is not None,
            "qk_clip": getattr(config, "qk_clip", False),
        }
        bad = [name for name, on in unsupported.items() if on]
        if bad:
            raise ValueError(
                f"SDPAttention does not support {', '.join(bad)}; use transformer_impl='te' "
                "(Transformer Engine) or 'local' (megatron-core DotProductAttention)"
            )
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp_size = pg_collection.tp.size()
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        self.num_heads = divide(config.num_attention_heads, tp_size)
        self.num_groups = divide(config.num_query_groups, tp_size)
        head_dim = config.kv_channels
        # apply_query_key_layer_scaling divides the scale by layer_number and multiplies it back
        # inside the fp32 softmax; the product is the plain scale, which SDPA applies in one go.
        self.softmax_scale = softmax_scale if softmax_scale is not None else head_dim**-0.5
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError(
                "SDPAttention supports neither packed sequences nor attention_bias; "
                "use transformer_impl='te'"
            )
        sq, b, np_, hn = query.shape
        sk = key.size(0)
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type

        mask, is_causal = None, False
        if attention_mask is not None:
            if attention_mask.dtype != torch.bool:
                raise ValueError(
                    f"attention_mask must be boolean (True = masked), got {attention_mask.dtype}"
                )
            mask = ~attention_mask  # SDPA: True = may attend
        elif mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal) and sq > 1:
            # sq == 1 is one new token against a KV cache: it sees every key, no mask.
            if sq != sk:
                raise ValueError(f"causal self-attention needs sq == sk, got sq={sq}, sk={sk}")
            is_causal = True

        # [s, b, heads, hn] -> [b, heads, s, hn]: views, no copies (SDPA takes strided inputs).
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        dropout_p = self.dropout_p if self.training else 0.0
        # With sequence parallel the whole block already runs inside the tracker's fork (as in
        # DotProductAttention). Without dropout nothing is drawn, so skip the two state copies.
        if dropout_p > 0.0 and not self.config.sequence_parallel:
            rng = tensor_parallel.get_cuda_rng_tracker().fork()
        else:
            rng = nullcontext()
        with rng:
            out = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=self.softmax_scale,
                enable_gqa=self.num_heads != self.num_groups,
            )
        # [b, np, sq, hn] -> [sq, b, np*hn] (one copy of the context, as DotProductAttention makes)
        return out.permute(2, 0, 1, 3).reshape(sq, b, np_ * hn)
