"""Share of FFN neurons activated per layer, for token input (K = 1) and patch input (K > 1).

Definition (stated in every output of tools/neuron_activation.py):
    The FFN of a layer is SwiGLU: linear_fc1(x) = [gate; up], out = linear_fc2(silu(gate) * up).
    Neuron j of the layer is *activated* at a transformer position when its gate output
    silu(gate_j) is above a threshold (default 0; since silu(z) > 0 exactly when z > 0, that is
    "the gate pre-activation is positive"). A layer's share is
        activated (position, neuron) pairs / (positions x ffn_hidden_size)
    over every position of the sample: T*K positions at K = 1 and T at K (each a patch).
This follows the idea of the paper's Fig. 8 (the fraction of FFN neurons a unit of input
engages); the paper's exact criterion for SwiGLU could not be consulted here, so the threshold
is a parameter.

Captured with forward hooks on each layer's `mlp.linear_fc1` (megatron-core's MLP or TE's
fused linear; the output, plus its bias when the linear returns one), so the model code is
untouched. One process, TP = PP = 1: with TP each rank holds a slice [gate_r; up_r].
"""
import contextlib
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

DEFINITION = (
    "neuron j of a layer is activated at a position when silu(gate_j) > {threshold:g}, where "
    "[gate; up] = linear_fc1(x) of the SwiGLU FFN; share = activated (position, neuron) pairs / "
    "(positions x ffn_hidden_size); K = 1 runs T*K token positions, K > 1 runs T patch positions "
    "(each the mean of K token embeddings) over the same tokens"
)


def ffn_layers(model) -> List:
    """The transformer layers of a (PatchGPT/GPT) model whose MLP is SwiGLU."""
    layers = list(model.decoder.layers)
    if not layers:
        raise ValueError("the model has no transformer layers on this rank")
    for layer in layers:
        if not hasattr(getattr(layer, "mlp", None), "linear_fc1"):
            raise ValueError(f"layer {layer.layer_number} has no mlp.linear_fc1 (MoE or no MLP?)")
    if not model.config.gated_linear_unit:
        raise ValueError("the FFN is not gated (gated_linear_unit=False): no SwiGLU gate to count")
    return layers


@contextlib.contextmanager
def count_gate_activity(model, threshold: float = 0.0):
    """Yields {layer_number: [activated, total]} filled by every forward run inside the block."""
    counts: Dict[int, List[int]] = {}
    handles = []

    def make_hook(layer_number: int):
        def hook(module, inputs, output):
            out, bias = output if isinstance(output, tuple) else (output, None)
            if bias is not None:
                out = out + bias
            gate = out[..., : out.size(-1) // 2]  # megatron's glu: chunk(2, -1) -> gate, up
            active = (F.silu(gate.float()) > threshold).sum().item()  # a host sync per layer
            c = counts.setdefault(layer_number, [0, 0])
            c[0] += int(active)
            c[1] += gate.numel()

        return hook

    for layer in ffn_layers(model):
        handles.append(layer.mlp.linear_fc1.register_forward_hook(make_hook(layer.layer_number)))
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
                      threshold: float = 0.0, micro_batch_size: int = 1) -> Dict[int, List[float]]:
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
            with as_patch_size(model, K), count_gate_activity(model, threshold) as counts:
                for i in range(0, n, micro_batch_size):
                    model(tokens[i:i + micro_batch_size], None, None)
            out[K] = [counts[k][0] / counts[k][1] for k in sorted(counts)]
    finally:
        model.train(was_training)
    return out
