"""The trainer of tools/pretrain.py.

    config.py        RunConfig sections; flags generated from the fields (megatron_patch/flags.py)
    preflight.py     checks against files and the launch, once, before any process group
    megatron_flags.py Megatron-LM flags that are not settings (no-ops, refusals) and defaults that differ
    stages.py        the recipe as data: plan_stages -> [Stage(patch, K=4, ...), Stage(token, K=1, ...)]
    trainer.py       Trainer.train(): the stages, each one loop of calls to the collaborators below
    builders.py      model chunks + DDP, megatron optimizer, LR schedule (all megatron-core)
    data.py          stage datasets and the resumable micro-batch order
    step.py          one train step / evaluation through megatron-core's pipeline schedules
    checkpointer.py  resume, start weights, periodic saves, the hand-over between stages
    checkpointing.py a training checkpoint: optimizer, scheduler, RNG, TrainState on top of the
                     weights format of megatron_patch/checkpoint/ (below training/ and export/)
    rundir.py        the layout of a run directory (a checkpoint directory's: checkpoint/layout.py)
    evaluation.py    token-level validation in training, and of a checkpoint (tools/evaluate.py)
    metrics.py       log lines, metrics.jsonl (writer and reader), TensorBoard, W&B
    preemption.py    exit on a signal, a wall-clock limit or a step count
    divergence.py    non-finite steps: stop (default) or skip up to N
    ownership.py     one run per run directory, one live launch per run
    account.py       compute.json; flops.py the FLOPs formulas; state.py the TrainState
    convert.py       weights-only and Hugging Face conversion

Names are imported lazily (PEP 562), so config parsing and preflight checks start fast.
"""
import importlib

_EXPORTS = {
    "RunConfig": "megatron_patch.training.config",
    "parse_config": "megatron_patch.training.config",
    "resolve": "megatron_patch.training.preflight",
    "Trainer": "megatron_patch.training.trainer",
    "run": "megatron_patch.training.trainer",
    "Stage": "megatron_patch.training.stages",
    "plan_stages": "megatron_patch.training.stages",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
