"""Hand-over variants: what a stage does to the weights it starts from (Stage.reinit/shrink/perturb).

The paper keeps the previous stage's weights as they are. Warm-started networks can train and
generalise worse than fresh ones (Ash & Adams, NeurIPS 2020), so two remedies can be applied
at the hand-over, both against a fresh draw of the model's own initialisation:
- re-initialise named parameter groups (`GROUPS`): those weights become the fresh draw;
- shrink and perturb the rest: theta <- shrink * theta + perturb * theta_fresh.
The fresh draw is seeded by the run's seed and the stage's place in the plan, inside a forked
RNG, so it is the same at every launch (a resumed run never re-applies it: it loads the
stage's own checkpoint) and the run's own random stream is untouched. With
`use_cpu_initialization` it is identical at every TP/PP layout. Cost: one extra copy of the
model while the stage starts.
"""
import contextlib
from typing import Dict, List, Sequence

import torch

GROUPS: Dict[str, tuple] = {
    # group: substrings of megatron-core GPTModel parameter names (one chunk, any PP stage)
    "embedding": ("embedding.word_embeddings.",),
    "output_layer": ("output_layer.",),
    "final_norm": ("decoder.final_layernorm.",),
    "out_proj": (".self_attention.linear_proj.", ".mlp.linear_fc2."),
    "layers": ("decoder.layers.",),
}


def in_groups(name: str, groups: Sequence[str]) -> bool:
    """Whether parameter `name` belongs to any of `groups` ("all" holds every parameter)."""
    if "all" in groups:
        return True
    return any(part in name for g in groups for part in GROUPS[g])


@contextlib.contextmanager
def seeded(seed: int):
    """Run the body with every RNG the model init reads seeded by `seed`, then restore them."""
    from megatron.core import tensor_parallel

    from megatron_patch import distributed

    tracker = tensor_parallel.get_cuda_rng_tracker()
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    states = tracker.get_states()
    distributed.set_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        tracker.set_states(states)


def fresh_seed(run_seed: int, stage_index: int) -> int:
    """The seed of the fresh draw at the start of plan stage `stage_index` (never the run's own)."""
    return run_seed + 7919 * stage_index


def apply(chunks: List[torch.nn.Module], fresh: List[torch.nn.Module], reinit: Sequence[str],
          shrink: float, perturb: float) -> Dict[str, int]:
    """Re-initialise `reinit` groups from `fresh` and shrink-and-perturb every other weight, in
    place. Returns how many tensors each rule touched."""
    counts = {"reinit": 0, "shrink_perturb": 0}
    scaled = (shrink, perturb) != (1.0, 0.0)
    with torch.no_grad():
        for chunk, new in zip(chunks, fresh):
            fresh_params = dict(new.named_parameters())
            for name, param in chunk.named_parameters():
                theta_fresh = fresh_params[name]
                if in_groups(name, reinit):
                    param.copy_(theta_fresh)
                    counts["reinit"] += 1
                elif scaled:
                    param.mul_(shrink).add_(theta_fresh.to(param.dtype), alpha=perturb)
                    counts["shrink_perturb"] += 1
    return counts


def apply_at_start(cfg, stage, stage_index: int, chunks: List[torch.nn.Module], dtype) -> str:
    """Apply the stage's hand-over variant to the weights it starts from; returns the log line."""
    from megatron_patch.training.builders import build_chunks

    with seeded(fresh_seed(cfg.train.seed, stage_index)):
        fresh = build_chunks(cfg, dtype=dtype, **stage.model_args())
    counts = apply(chunks, fresh, stage.reinit, stage.shrink, stage.perturb)
    del fresh
    return describe(stage, counts)


def describe(stage, counts: Dict[str, int]) -> str:
    parts = []
    if counts["reinit"]:
        parts.append(f"re-initialised {counts['reinit']} tensors ({','.join(stage.reinit)})")
    if counts["shrink_perturb"]:
        parts.append(f"shrink {stage.shrink:g} and perturb {stage.perturb:g} on {counts['shrink_perturb']} tensors")
    return f"{stage.name} stage hand-over: " + "; ".join(parts)


def changes_weights(stage) -> bool:
    return bool(stage.reinit) or (stage.shrink, stage.perturb) != (1.0, 0.0)
