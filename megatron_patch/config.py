"""Typed model and parallelism configs, the paper's model sizes, and their validation.

`ModelConfig` is the architecture (LLaMA-style: RMSNorm pre-norm, SwiGLU, RoPE, no biases,
untied embeddings by default). `ParallelConfig` is the layout. `validate_for` checks the two
together with a patch size and sequence length and raises ValueError with the fix.
"""
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class ModelConfig:
    """Architecture of a LLaMA-style GPT."""

    num_layers: int
    """Transformer layers."""
    hidden_size: int
    """Model width h."""
    ffn_hidden_size: int
    """SwiGLU inner width."""
    num_attention_heads: int
    """Query heads; must divide hidden_size."""
    num_query_groups: Optional[int] = None
    """Key/value heads for grouped-query attention (None = multi-head attention)."""
    vocab_size: int = 32000
    """Tokenizer vocabulary; padded up for TP by make_vocab_size_divisible_by."""
    make_vocab_size_divisible_by: int = 128
    """Pad the vocabulary to a multiple of this times TP (Megatron's default is 128)."""
    max_seq_length: int = 8192
    """Longest sample in tokens (T*K); the paper's patch context is 2048 patches = 8192 tokens at K=4."""
    tie_embeddings: bool = False
    """Share input embedding and output layer weights (the paper unties them)."""
    rotary_base: int = 10000
    """RoPE base."""
    norm_epsilon: float = 1e-5
    """RMSNorm epsilon."""
    init_method_std: float = 0.02
    """Std of the normal weight initialisation."""
    transformer_impl: str = "auto"
    """Layer implementation: "auto" (TE if it imports, else "sdpa"), "te", "sdpa", "local"; see megatron_patch.layers."""

    def __post_init__(self):
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} does not divide "
                f"hidden_size={self.hidden_size}; pick a head count that divides the width"
            )
        groups = self.num_query_groups or self.num_attention_heads
        if self.num_attention_heads % groups:
            raise ValueError(
                f"num_query_groups={groups} must divide num_attention_heads={self.num_attention_heads}"
            )
        if self.make_vocab_size_divisible_by < 1:
            raise ValueError("make_vocab_size_divisible_by must be >= 1 (1 = no padding)")

    def padded_vocab_size(self, tp: int = 1) -> int:
        """Vocabulary rounded up to a multiple of make_vocab_size_divisible_by * TP (as Megatron does)."""
        multiple = self.make_vocab_size_divisible_by * tp
        return -(-self.vocab_size // multiple) * multiple

    def num_params(self, tp: int = 1) -> int:
        """Parameter count (embeddings included)."""
        h, f, L = self.hidden_size, self.ffn_hidden_size, self.num_layers
        kv = (self.num_query_groups or self.num_attention_heads) * (h // self.num_attention_heads)
        per_layer = h * (h + 2 * kv) + h * h + 3 * h * f + 2 * h
        emb = self.padded_vocab_size(tp) * h * (1 if self.tie_embeddings else 2)
        return L * per_layer + emb + h

    def transformer_config(self, parallel: "ParallelConfig", params_dtype=torch.float32):
        """The megatron-core TransformerConfig for this architecture and layout."""
        from megatron.core.transformer.transformer_config import TransformerConfig

        bf16 = params_dtype == torch.bfloat16
        return TransformerConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups,
            kv_channels=self.hidden_size // self.num_attention_heads,
            normalization="RMSNorm",
            layernorm_epsilon=self.norm_epsilon,
            gated_linear_unit=True,
            activation_func=F.silu,
            add_bias_linear=False,
            add_qkv_bias=False,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            init_method_std=self.init_method_std,
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
            sequence_parallel=parallel.sequence_parallel,
            params_dtype=params_dtype,
            pipeline_dtype=params_dtype,
            bf16=bf16,
            autocast_dtype=params_dtype if bf16 else None,
            use_cpu_initialization=parallel.use_cpu_initialization,
            # Fusions that need CUDA kernels or apex; the unfused paths are exact.
            bias_activation_fusion=False,
            bias_dropout_fusion=False,
            masked_softmax_fusion=False,
            apply_rope_fusion=False,
            gradient_accumulation_fusion=False,
            persist_layer_norm=False,
            cross_entropy_loss_fusion=False,
        )


@dataclass
class ParallelConfig:
    """How the model is split across ranks (data parallel size is what is left of the world)."""

    tensor_model_parallel_size: int = 1
    """TP: splits heads, FFN and vocabulary."""
    pipeline_model_parallel_size: int = 1
    """PP: splits layers into stages."""
    virtual_pipeline_model_parallel_size: Optional[int] = None
    """Model chunks per pipeline rank for the interleaved schedule (None = 1F1B)."""
    sequence_parallel: bool = False
    """Split norms/dropout activations along the sequence across TP (needs an SP-capable norm)."""
    use_cpu_initialization: bool = True
    """Initialise full weights on CPU then slice: identical weights at every TP size."""

    def __post_init__(self):
        if self.tensor_model_parallel_size < 1 or self.pipeline_model_parallel_size < 1:
            raise ValueError("tensor/pipeline model parallel sizes must be >= 1")
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            self.sequence_parallel = False  # as Megatron does: SP is meaningless without TP


def validate_for(
    model: ModelConfig, parallel: ParallelConfig, patch_size: int, seq_length: int
) -> None:
    """Check a model, layout, patch size K and sample length (tokens) against each other."""
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"--patch-size must be an integer >= 1 (1 = token-level), got {patch_size!r}")
    if seq_length % patch_size:
        raise ValueError(
            f"--seq-length {seq_length} is not a multiple of --patch-size {patch_size}; "
            f"use e.g. {seq_length - seq_length % patch_size or patch_size}"
        )
    if seq_length > model.max_seq_length:
        raise ValueError(
            f"--seq-length {seq_length} tokens (T*K) exceeds max_seq_length {model.max_seq_length}; "
            "raise max_seq_length in the model config or shorten the sequence"
        )
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    groups = model.num_query_groups or model.num_attention_heads
    if model.num_attention_heads % tp or groups % tp:
        raise ValueError(
            f"--tensor-model-parallel-size {tp} must divide num_attention_heads "
            f"({model.num_attention_heads}) and num_query_groups ({groups})"
        )
    if model.ffn_hidden_size % tp:
        raise ValueError(
            f"--tensor-model-parallel-size {tp} does not divide ffn_hidden_size {model.ffn_hidden_size}"
        )
    if model.padded_vocab_size(tp) % tp:
        raise ValueError(f"padded vocabulary {model.padded_vocab_size(tp)} not divisible by TP={tp}")
    chunks = pp * (parallel.virtual_pipeline_model_parallel_size or 1)
    if model.num_layers % chunks:
        raise ValueError(
            f"num_layers={model.num_layers} is not divisible by pipeline stages x virtual chunks = {chunks}"
        )
    positions = seq_length // patch_size
    if parallel.sequence_parallel and positions % tp:
        raise ValueError(
            f"sequence parallel needs the transformer length T={positions} (= seq_length/K) "
            f"divisible by TP={tp}, so every rank holds whole patches"
        )


# The paper's sizes (DESIGN.md, LLaMA-2 tokenizer) and small CPU presets.
PRESETS = {
    "370m": ModelConfig(num_layers=24, hidden_size=1024, ffn_hidden_size=2752, num_attention_heads=16),
    "780m": ModelConfig(num_layers=24, hidden_size=1536, ffn_hidden_size=4128, num_attention_heads=16),
    "1.3b": ModelConfig(num_layers=24, hidden_size=2048, ffn_hidden_size=5504, num_attention_heads=16),
    "2.7b": ModelConfig(num_layers=32, hidden_size=2560, ffn_hidden_size=6880, num_attention_heads=32),
    # Unit/distributed tests: seconds per run on 2 CPU cores.
    "tiny": ModelConfig(
        num_layers=4, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
        vocab_size=1000, max_seq_length=1024,
    ),
    # The CPU demo and benchmarks: ~10M parameters with an 8k vocabulary.
    "cpu-small": ModelConfig(
        num_layers=4, hidden_size=256, ffn_hidden_size=688, num_attention_heads=4,
        vocab_size=8000, max_seq_length=4096,
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """A copy of a named preset with fields overridden (re-validated)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
