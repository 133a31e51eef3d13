"""Share of FFN neurons activated per layer: the paper's Fig. 8 measure, and a SwiGLU-gate variant.

Definitions (the text of each is stated in every output of tools/neuron_activation.py):
- "paper" (default): a neuron of layer l is one of the h outputs of that layer's FFN, the MLP
  output after `linear_fc2` (plus its bias, if any). It is activated at a position when its
  absolute value exceeds the threshold (default 0.5, the paper's). A layer's share is
      activated (position, neuron) pairs / (positions x hidden_size).
- "gate": neuron j of the SwiGLU FFN, out = linear_fc2(silu(gate) * up) with [gate; up] =
  linear_fc1(x), is activated when silu(gate_j) > threshold (default 0: the gate pre-activation
  is positive); share = activated pairs / (positions x ffn_hidden_size).
Positions are transformer positions: T*K tokens at K = 1, T patches at K > 1 (each the mean of K
token embeddings), over the same tokens.

Two comparisons:
- one model, token input against patch input (`activation_shares(model, tokens, [1, K])`);
- several models, each at its own K (`compare_models`), as in the paper's figure.

Captured with forward hooks on each layer's `mlp.linear_fc2` ("paper") or `mlp.linear_fc1`
("gate"), megatron-core's or TE's linears alike, so the model code is untouched. One process,
TP = PP = 1 (with TP each rank would hold a slice of the FFN).
"""
import contextlib
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

DEFINITIONS = ("paper", "gate")
DEFAULT_THRESHOLD = {"paper": 0.5, "gate": 0.0}
DEFINITION_TEXT = {
    "paper": (
        "a neuron of a layer is one of the hidden_size outputs of its FFN (the MLP output, after "
        "linear_fc2); it is activated at a position when |output| > {threshold:g}; share = activated "
        "(position, neuron) pairs / (positions x hidden_size); K = 1 runs T*K token positions, K > 1 "
        "runs T patch positions (each the mean of K token embeddings) over the same tokens"
    ),
    "gate": (
        "neuron j of a layer is activated at a position when silu(gate_j) > {threshold:g}, where "
        "[gate; up] = linear_fc1(x) of the SwiGLU FFN; share = activated (position, neuron) pairs / "
        "(positions x ffn_hidden_size); K = 1 runs T*K token positions, K > 1 runs T patch positions "
        "(each the mean of K token embeddings) over the same tokens"
    ),
}


def threshold_for(definition: str, threshold: Optional[float]) -> float:
    if definition not in DEFINITIONS:
        raise ValueError(f"definition must be one of {DEFINITIONS}, got {definition!r}")
    return DEFAULT_THRESHOLD[definition] if threshold is None else threshold


def describe(definition: str, threshold: Optional[float] = None) -> str:
    return DEFINITION_TEXT[definition].format(threshold=threshold_for(definition, threshold))


def activated_pairs(output: torch.Tensor, definition: str, threshold: float) -> Tuple[int, int]:
    """(activated, total) (position, neuron) pairs of one layer's hooked output [..., width].

    "paper": `output` is the FFN output; "gate": it is linear_fc1's [gate; up]."""
    if definition == "paper":
        values = output.float().abs()
    elif definition == "gate":
        gate = output[..., : output.size(-1) // 2]  # megatron's glu: chunk(2, -1) -> gate, up
        values = F.silu(gate.float())
    else:
        raise ValueError(f"definition must be one of {DEFINITIONS}, got {definition!r}")
    return int((values > threshold).sum().item()), values.numel()  # a host sync per layer


def ffn_layers(model, definition: str = "paper") -> List:
    """The transformer layers of a (PatchGPT/GPT) model, checked to have the hooked linear."""
    layers = list(model.decoder.layers)
    if not layers:
        raise ValueError("the model has no transformer layers on this rank")
    name = "linear_fc2" if definition == "paper" else "linear_fc1"
    for layer in layers:
        if not hasattr(getattr(layer, "mlp", None), name):
            raise ValueError(f"layer {layer.layer_number} has no mlp.{name} (MoE or no MLP?)")
    if definition == "gate" and not model.config.gated_linear_unit:
        raise ValueError("the FFN is not gated (gated_linear_unit=False): no SwiGLU gate to count; "
                         "use --definition paper")
    return layers


@contextlib.contextmanager
def count_activity(model, definition: str = "paper", threshold: Optional[float] = None):
    """Yields {layer_number: [activated, total]} filled by every forward run inside the block."""
    threshold = threshold_for(definition, threshold)
    counts: Dict[int, List[int]] = {}

    def make_hook(layer_number: int):
        def hook(module, inputs, output):
            out, bias = output if isinstance(output, tuple) else (output, None)
            if bias is not None:
                out = out + bias
            active, total = activated_pairs(out, definition, threshold)
            c = counts.setdefault(layer_number, [0, 0])
            c[0] += active
            c[1] += total

        return hook

    name = "linear_fc2" if definition == "paper" else "linear_fc1"
    handles = [getattr(layer.mlp, name).register_forward_hook(make_hook(layer.layer_number))
               for layer in ffn_layers(model, definition)]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def as_patch_size(model, patch_size: int):
    """Run the same weights with patch input of `patch_size` tokens (1 = token input)."""
    saved = model.patch_size
    model.patch_size = patch_size
    try:
        yield model
    finally:
        model.patch_size = saved


@torch.no_grad()
def activation_shares(model, tokens: torch.Tensor, patch_sizes: Sequence[int],
                      threshold: Optional[float] = None, micro_batch_size: int = 1,
                      definition: str = "paper") -> Dict[int, List[float]]:
    """{K: [share of layer 1, layer 2, ...]} over `tokens` [n, T*K_max] for each K.

    Every K sees the same tokens; the sample length must be a multiple of every K.
    """
    n, s = tokens.shape
    bad = [K for K in patch_sizes if K < 1 or s % K]
    if bad:
        raise ValueError(f"sample length {s} is not a multiple of patch size(s) {bad}")
    was_training = model.training
    model.eval()
    out = {}
    try:
        for K in patch_sizes:
            with as_patch_size(model, K), count_activity(model, definition, threshold) as counts:
                for i in range(0, n, micro_batch_size):
                    model(tokens[i:i + micro_batch_size], None, None)
            out[K] = [counts[k][0] / counts[k][1] for k in sorted(counts)]
    finally:
        model.train(was_training)
    return out


@dataclass
class Measured:
    """One model's per-layer shares at one patch size."""

    name: str
    patch_size: int
    shares: List[float]


def compare_models(models: Sequence[Tuple[str, object, int]], tokens: torch.Tensor,
                   threshold: Optional[float] = None, micro_batch_size: int = 1,
                   definition: str = "paper") -> List[Measured]:
    """Each (name, model, K) measured at its own K on the same tokens (the paper's Fig. 8)."""
    return [Measured(name, K, activation_shares(model, tokens, [K], threshold, micro_batch_size,
                                                definition)[K])
            for name, model, K in models]


# ----------------------------------------------------------------------------- inputs


def load_checkpoint_model(path: str, patch_size: Optional[int] = None, device=None):
    """(model in fp32 on `device`, its run's K, its vocabulary size, the checkpoint path) from a
    checkpoint or run directory (`rundir.resolve_checkpoint`). Needs a world of one
    (`distributed.initialize(ParallelConfig())`)."""
    from megatron_patch.config import ParallelConfig
    from megatron_patch.training import rundir
    from megatron_patch.training.convert import load_model_for

    ckpt = rundir.resolve_checkpoint(path)
    # fp32 on every device: the thresholds compare values, not ranks.
    cfg, chunks = load_model_for(ckpt, ParallelConfig(), patch_size=patch_size or 1,
                                 dtype=torch.float32)
    model = chunks[0] if device is None else chunks[0].to(device)
    return model, _trained_patch_size(ckpt, cfg), cfg.model.vocab_size, ckpt


def _trained_patch_size(ckpt: str, cfg) -> int:
    """K the checkpoint was trained at: its stage's (a K schedule has several), else the run's."""
    from megatron_patch.training.checkpointing import common_state

    stage = common_state(ckpt).get("stage") or {}
    return int(stage.get("patch_size", cfg.train.patch_size))


def model_name(path: str) -> str:
    """A short name for a checkpoint path: the run directory's name (stage dirs included)."""
    from megatron_patch.training import rundir

    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    while len(parts) > 1 and (rundir.is_stage_name(parts[-1].removesuffix("_weights"))
                              or parts[-1].startswith("iter_") or parts[-1] == rundir.RELEASE):
        parts.pop()
    return parts[-1]


def random_sample(num_samples: int, seq_length: int, vocab_size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (num_samples, seq_length), generator=g)


def read_sample(data_path: str, num_samples: int, seq_length: int, vocab_size: int,
                start_document: int = 0) -> torch.Tensor:
    """[num_samples, seq_length] token ids: documents from `start_document` on, concatenated."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_patch.data.paths import check_prefix

    check_prefix(data_path)
    need = num_samples * seq_length
    ds = IndexedDataset(data_path)
    pieces, have = [], 0
    for i in range(start_document, len(ds)):
        doc = np.asarray(ds[i], dtype=np.int64)
        pieces.append(doc)
        have += doc.size
        if have >= need:
            break
    if have < need:
        raise ValueError(f"{data_path} has {have} tokens from document {start_document} on, the "
                         f"sample needs {need} (lower --num-samples or --seq-length)")
    tokens = np.concatenate(pieces)[:need]
    if tokens.max() >= vocab_size:
        raise ValueError(f"the data holds token id {int(tokens.max())} >= the model's vocabulary "
                         f"{vocab_size}: data and checkpoint use different tokenizers")
    return torch.from_numpy(tokens).view(num_samples, seq_length)
