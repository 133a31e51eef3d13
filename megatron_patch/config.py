"""Typed model and parallelism configs, the paper's model sizes, and their validation.

`ModelConfig` is the architecture (LLaMA-style: RMSNorm pre-norm, SwiGLU, RoPE, no biases,
untied embeddings by default). `ParallelConfig` is the layout. `validate_for` checks the two
together with a patch size and sequence length and raises ValueError with the fix.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from megatron_patch.flags import HIDDEN, flag, flags


@dataclass
class ModelConfig:
    """Architecture of a LLaMA-style GPT (RMSNorm pre-norm, SwiGLU, RoPE, no biases)."""

    num_layers: int
    """Number of transformer layers."""
    hidden_size: int
    """Transformer hidden size h."""
    num_attention_heads: int
    """Number of attention (query) heads; must divide hidden_size."""
    ffn_hidden_size: Optional[int] = None
    """SwiGLU inner width (None: Megatron-LM's SwiGLU default, 8h/3 rounded down to a multiple of 64)."""
    group_query_attention: bool = False
    """Use grouped-query attention with --num-query-groups key/value heads."""
    num_query_groups: Optional[int] = None
    """Key/value heads of grouped-query attention (None: one per attention head)."""
    vocab_size: int = field(default=32000, metadata=HIDDEN)
    """Tokenizer vocabulary (set from the tokenizer); padded up for TP by make_vocab_size_divisible_by."""
    make_vocab_size_divisible_by: int = 128
    """Pad the vocabulary to a multiple of this times the tensor-parallel size."""
    max_position_embeddings: Optional[int] = None
    """Longest sequence in transformer positions: tokens in the token stage, patches (T, not T*K) in
    the patch stage. None: the longest stage's positions."""
    position_embedding_type: str = field(default="rope", metadata=flag(
        "--position-embedding-type", choices=("rope",)))
    """Position embedding; rotary embeddings over position indices 0..T-1 (patch indices in the patch stage)."""
    rotary_base: float = 10000.0
    """RoPE base (Hugging Face: rope_theta)."""
    normalization: str = field(default="RMSNorm", metadata=flag("--normalization", choices=("RMSNorm",)))
    """Normalization layer."""
    norm_epsilon: float = 1e-5
    """RMSNorm epsilon."""
    swiglu: bool = field(default=True, metadata=flag("--swiglu", choices=(True,)))
    """SwiGLU feed-forward (the only supported MLP)."""
    add_bias_linear: bool = field(default=False, metadata=flag(
        "--disable-bias-linear", const=False, choices=(False,)))
    """Biases in linear layers (not supported: LLaMA-style layers have none)."""
    tie_embeddings: bool = field(default=False, metadata=flags(
        flag("--untie-embeddings-and-output-weights", const=False), flag("--tie-embeddings", const=True)))
    """Share the input embedding and the output layer. The paper unties them, and so does this
    default (Megatron-LM's default ties them)."""
    init_method_std: float = 0.02
    """Standard deviation of the normal weight initialisation."""
    output_proj_init: str = field(default="scaled", metadata=flag(
        "--output-proj-init", choices=("scaled", "plain")))
    """Init of every layer's output projections (attention out, MLP down): scaled, megatron-core's
    std/sqrt(2*layers), or plain, std as every other weight (Hugging Face Llama's init)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities (the paper: none)."""
    hidden_dropout: float = 0.0
    """Dropout on the residual branches (the paper: none)."""
    transformer_impl: str = field(default="auto", metadata=flag(
        "--transformer-impl", choices=("auto", "te", "transformer_engine", "sdpa", "local")))
    """Layer implementation: auto (te when Transformer Engine imports, else sdpa), te (=
    transformer_engine), sdpa (PyTorch scaled_dot_product_attention), local (megatron-core's
    unfused local spec)."""
    use_flash_attn: bool = False
    """Require flash attention kernels (te and sdpa use them; local cannot)."""
    recompute_granularity: Optional[str] = field(default=None, metadata=flags(
        flag("--recompute-granularity"), flag("--recompute-activations", const="selective"),
        choices=("full", "selective")))
    """Activation recomputation: selective (attention core) or full (whole layers, see --recompute-method)."""
    recompute_method: Optional[str] = field(default=None, metadata=flag(
        "--recompute-method", choices=("uniform", "block")))
    """With full recomputation: uniform (groups of --recompute-num-layers) or block (the first N layers)."""
    recompute_num_layers: Optional[int] = None
    """With full recomputation: layers per group (uniform) or recomputed layers (block)."""

    def __post_init__(self):
        if self.transformer_impl == "transformer_engine":
            self.transformer_impl = "te"
        if self.ffn_hidden_size is None and isinstance(self.hidden_size, int):
            self.ffn_hidden_size = int(4 * self.hidden_size * 2 / 3) // 64 * 64
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"--num-attention-heads {self.num_attention_heads} does not divide "
                f"--hidden-size {self.hidden_size}; pick a head count that divides the width"
            )
        if self.group_query_attention and self.num_query_groups is None:
            raise ValueError("--group-query-attention needs --num-query-groups N")
        groups = self.num_query_groups or self.num_attention_heads
        if groups < 1 or self.num_attention_heads % groups:
            raise ValueError(
                f"--num-query-groups {groups} must divide --num-attention-heads {self.num_attention_heads}"
            )
        if self.make_vocab_size_divisible_by < 1:
            raise ValueError("--make-vocab-size-divisible-by must be >= 1 (1 = no padding)")
        if self.max_position_embeddings is not None and self.max_position_embeddings < 1:
            raise ValueError("--max-position-embeddings must be >= 1")
        for name in ("attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if not (self.init_method_std > 0 and self.norm_epsilon > 0 and self.rotary_base > 0):
            raise ValueError("--init-method-std, --norm-epsilon and --rotary-base must be positive")
        if self.use_flash_attn and self.transformer_impl == "local":
            raise ValueError("--use-flash-attn: the local layer spec has no flash attention; use "
                             "--transformer-impl sdpa (PyTorch's flash kernels) or transformer_engine")
        if self.recompute_granularity == "full" and (self.recompute_method is None
                                                     or not self.recompute_num_layers):
            raise ValueError("--recompute-granularity full needs --recompute-method uniform|block "
                             "and --recompute-num-layers N")

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
        from megatron.core.utils import init_method_normal

        from megatron_patch.layers.spec import kernel_fusions

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
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            init_method_std=self.init_method_std,
            output_layer_init_method=(init_method_normal(self.init_method_std)
                                      if self.output_proj_init == "plain" else None),
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
            sequence_parallel=parallel.sequence_parallel,
            params_dtype=params_dtype,
            pipeline_dtype=params_dtype,
            bf16=bf16,
            autocast_dtype=params_dtype if bf16 else None,
            use_cpu_initialization=parallel.cpu_initialization(),
            recompute_granularity=self.recompute_granularity,
            recompute_method=self.recompute_method,
            recompute_num_layers=self.recompute_num_layers,
            persist_layer_norm=False,
            cross_entropy_loss_fusion=False,
            **kernel_fusions(),
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
    use_cpu_initialization: Optional[bool] = None
    """Initialise every full weight on the CPU, then keep this rank's slice (as Megatron-LM's flag):
    identical weights at every TP size, but each rank builds the whole model in host memory and
    the init is single-threaded. None (the default): on the device, megatron-core's default, on a
    GPU (each rank initialises its own slice there, seeded per TP rank), on the CPU on a CPU."""
    grad_reduce_in_bf16: bool = False
    """Accumulate and reduce gradients in bf16 under --bf16 (half the traffic, less precise);
    by default in fp32, as Megatron-LM does under bf16."""
    overlap_grad_reduce: bool = False
    """Overlap the data-parallel gradient reduce-scatter/all-reduce with the backward pass."""
    overlap_param_gather: bool = False
    """Overlap the DistributedOptimizer's parameter all-gather with the forward pass."""
    distributed_timeout_minutes: int = 10
    """Timeout of collectives (torch.distributed init_process_group)."""

    def cpu_initialization(self) -> bool:
        """Whether weights are initialised on the CPU: the flag, or by default only without a GPU."""
        if self.use_cpu_initialization is not None:
            return self.use_cpu_initialization
        from megatron_patch import device

        return not device.on_gpu()

    def __post_init__(self):
        if self.tensor_model_parallel_size < 1 or self.pipeline_model_parallel_size < 1:
            raise ValueError("tensor/pipeline model parallel sizes must be >= 1")
        if self.distributed_timeout_minutes < 1:
            raise ValueError("--distributed-timeout-minutes must be >= 1")
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            self.sequence_parallel = False  # as Megatron does: SP is meaningless without TP


def validate_for(
    model: ModelConfig, parallel: ParallelConfig, patch_size: int, seq_length: int
) -> None:
    """Check a model, layout, patch size K (an int >= 1) and sample length (tokens) against each other."""
    if seq_length % patch_size:
        raise ValueError(
            f"--seq-length {seq_length} is not a multiple of --patch-size {patch_size}; "
            f"use e.g. {seq_length - seq_length % patch_size or patch_size}"
        )
    positions = seq_length // patch_size
    if model.max_position_embeddings is not None and positions > model.max_position_embeddings:
        raise ValueError(
            f"a sample of {seq_length} tokens at K={patch_size} is {positions} transformer positions, "
            f"more than --max-position-embeddings {model.max_position_embeddings}; raise it or "
            "shorten the sequence"
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
    if parallel.sequence_parallel and positions % tp:
        raise ValueError(
            f"sequence parallel needs the transformer length T={positions} (= seq_length/K) "
            f"divisible by TP={tp}, so every rank holds whole patches"
        )


# The paper's sizes (LLaMA-2 tokenizer; 2048 positions in both stages: 2048 tokens, or 2048
# patches of K tokens) and small CPU presets.
PRESETS = {
    "370m": ModelConfig(num_layers=24, hidden_size=1024, ffn_hidden_size=2752, num_attention_heads=16,
                        max_position_embeddings=2048),
    "780m": ModelConfig(num_layers=24, hidden_size=1536, ffn_hidden_size=4128, num_attention_heads=16,
                        max_position_embeddings=2048),
    "1.3b": ModelConfig(num_layers=24, hidden_size=2048, ffn_hidden_size=5504, num_attention_heads=16,
                        max_position_embeddings=2048),
    "2.7b": ModelConfig(num_layers=32, hidden_size=2560, ffn_hidden_size=6880, num_attention_heads=32,
                        max_position_embeddings=2048),
    # Unit/distributed tests: seconds per run on 2 CPU cores.
    "tiny": ModelConfig(
        num_layers=4, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
        vocab_size=1000, max_position_embeddings=1024,
    ),
    # The CPU demo and benchmarks: ~10M parameters with an 8k vocabulary.
    "cpu-small": ModelConfig(
        num_layers=4, hidden_size=256, ffn_hidden_size=688, num_attention_heads=4,
        vocab_size=8000, max_position_embeddings=4096,
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """A copy of a named preset with fields overridden (re-validated)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
