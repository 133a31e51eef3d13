"""`PatchGPTModel`: megatron-core's `GPTModel` plus one argument, `patch_size` (K).

Build it exactly like `GPTModel` and add `patch_size=K` (and, for the recipe's knobs,
`target_decay` for the weights of a patch's K targets and `mean_dtype` for the patch mean).
The two hooks (docs/design.md):
- input: the K-token mean from `megatron_patch.patch.patch_embedding`, passed to GPTModel as
  `decoder_input`, so the transformer runs on T positions with RoPE positions 0..T-1;
- loss: `compute_language_model_loss` uses the K-target `patch_cross_entropy`.
With K = 1 nothing is overridden: it *is* GPTModel (same losses, gradients, checkpoint keys),
and the weights of a patch model load into a token model unchanged.
"""
from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel

from megatron_patch.patch import MEAN_DTYPES, patch_cross_entropy, patch_embedding


class PatchGPTModel(GPTModel):
    """GPTModel whose input positions are patches of `patch_size` tokens."""

    def __init__(self, *args, patch_size: int = 1, target_decay: float = 1.0, mean_dtype: str = "fp32",
                 **kwargs):
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be an integer >= 1 (1 = token model), got {patch_size!r}")
        if not target_decay > 0:
            raise ValueError(f"target_decay must be > 0 (1 = uniform weights), got {target_decay!r}")
        if mean_dtype not in MEAN_DTYPES:
            raise ValueError(f"mean_dtype must be one of {MEAN_DTYPES}, got {mean_dtype!r}")
        super().__init__(*args, **kwargs)
        self.patch_size = patch_size
        # Recipe knobs of the patch stage; plain attributes (no parameters, no checkpoint keys).
        self.target_decay = target_decay
        self.mean_dtype = mean_dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: Optional[torch.Tensor],
        attention_mask: Optional[torch.Tensor],
        decoder_input: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        *args,
        **kwargs,
    ):
        """input_ids/labels: [b, T*K]; position_ids: [b, T] or None. Returns loss [b, T*K] or logits."""
        if self.patch_size > 1 and decoder_input is None and self.pre_process:
            decoder_input = patch_embedding(self.embedding, input_ids, self.patch_size, self.mean_dtype)
        return super().forward(
            input_ids, position_ids, attention_mask, decoder_input, labels, *args, **kwargs
        )

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.patch_size == 1:
            return super().compute_language_model_loss(labels, logits)
        tp_group = self.pg_collection.tp if self.config.tensor_model_parallel_size > 1 else None
        return patch_cross_entropy(logits, labels, self.patch_size, tp_group, self.target_decay)


def build_model(
    model_cfg,
    parallel_cfg,
    patch_size: int = 1,
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
    vp_stage: Optional[int] = None,
    params_dtype: torch.dtype = torch.float32,
    target_decay: float = 1.0,
    mean_dtype: str = "fp32",
) -> PatchGPTModel:
    """A `PatchGPTModel` for this rank's pipeline stage from a ModelConfig and ParallelConfig;
    `target_decay` and `mean_dtype` are the patch recipe's knobs (PatchGPTModel)."""
    from megatron_patch.layers import get_block_spec

    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    config = model_cfg.transformer_config(parallel_cfg, params_dtype=params_dtype)
    return PatchGPTModel(
        config=config,
        transformer_layer_spec=get_block_spec(config, model_cfg.transformer_impl, vp_stage=vp_stage),
        vocab_size=model_cfg.padded_vocab_size(parallel_cfg.tensor_model_parallel_size),
        max_sequence_length=model_cfg.max_position_embeddings or 4096,  # RoPE: unused
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=model_cfg.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=model_cfg.rotary_base,
        vp_stage=vp_stage,
        patch_size=patch_size,
        target_decay=target_decay,
        mean_dtype=mean_dtype,
    )
