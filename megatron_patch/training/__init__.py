"""The trainer of tools/pretrain.py: config, stages, loop, checkpoints, metrics, conversion.

    config.py        RunConfig sections + one parser for YAML and Megatron-style flags
    stages.py        the recipe as data: plan_stages -> [Stage(patch, K=4, ...), Stage(token, K=1, ...)]
    builders.py      model chunks + DDP, megatron optimizer, LR schedule (all megatron-core)
    data.py          stage datasets and the resumable micro-batch order
    step.py          one train step / evaluation through megatron-core's pipeline schedules
    loop.py          run(): the stages, the hand-over between them, the compute account
    checkpointing.py dist_checkpointing save/load in Megatron's layout
    convert.py       weights-only and Hugging Face conversion
    evaluation.py    token-level loss/perplexity of a checkpoint (tools/evaluate.py)
    preflight.py     config checks against files and the launch, before heavy imports
    flops.py, metrics.py, state.py

Names are imported lazily (PEP 562), so config parsing and preflight checks start fast.
"""
import importlib

_EXPORTS = {
    "RunConfig": "megatron_patch.training.config",
    "parse_config": "megatron_patch.training.config",
    "resolve": "megatron_patch.training.preflight",
    "run": "megatron_patch.training.loop",
    "Stage": "megatron_patch.training.stages",
    "plan_stages": "megatron_patch.training.stages",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

