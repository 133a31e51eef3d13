"""DistributedOptimizer checkpoint loading with plain torch Adam (no TE/Apex), megatron-core 0.16.1.

Without Transformer Engine or Apex, megatron-core's DistributedOptimizer wraps `torch.optim.AdamW`,
whose per-parameter state carries a `step` tensor. Its checkpoint code mishandles that `step`:

1. `state_dict()` on a fresh optimizer (no step taken yet, which is exactly the state a resumed
   run is in when it builds the sharded state dict to load into) fails `assert len(steps) == 1`
   because there are no per-parameter states to read the step from.
2. The `dp_reshardable` load copies into the fp32 main parameters (views of leaf parameters
   that require grad) outside `torch.no_grad()` ("a view of a leaf Variable that requires grad
   is being used in an in-place operation").
3. The `fully_reshardable` load copies every key of the parameter's optimizer state from the
   loaded tensors, but `step` is (rightly) not among them: KeyError 'step'.
4. Silently: `load_state_dict` puts ONE `step` tensor object into every parameter's state;
   torch's Adam increments `state["step"]` in place per parameter, so after a resume the shared
   counter advances once per parameter per step, the bias correction is wrong and losses drift.

`fix_torch_adam_distrib_optimizer()` replaces `state_dict` (1), `_set_main_param_and_optimizer_states`
(2, 3: copy under no_grad, skip `step`) and wraps `load_state_dict` (4); it is a no-op when
TE/Apex provide the optimizer (their FusedAdam keeps `step` in the param groups). Idempotent.
Proven by tests/distributed/train_resume.py: a run resumed from a DistributedOptimizer checkpoint
reproduces the uninterrupted run's losses exactly, step for step.
"""
import functools

import torch

_APPLIED = False


def _state_dict_fresh(self):
    """What `DistributedOptimizer.state_dict` returns, for an optimizer with no steps taken."""
    inner = self.optimizer.state_dict()
    state_dict = {"optimizer": {k: v for k, v in inner.items() if k != "state"}}
    for group in state_dict["optimizer"]["param_groups"]:
        del group["params"]
        group["step"] = 0  # torch Adam's count before its first step
    if self.grad_scaler:
        state_dict["grad_scaler"] = self.grad_scaler.state_dict()
    return state_dict


def fix_torch_adam_distrib_optimizer() -> None:
    """Idempotent; safe to call on CPU and GPU."""
    global _APPLIED
    if _APPLIED:
        return
    from megatron.core.optimizer import distrib_optimizer as mod

    from megatron_patch.compat.versions import check_versions

    check_versions()
    _APPLIED = True
    if mod.HAVE_APEX_OR_TE:  # FusedAdam: step lives in param_groups; nothing to fix
        return
    DO = mod.DistributedOptimizer

    orig_state_dict = DO.state_dict

    @functools.wraps(orig_state_dict)
    def state_dict(self):
        if not self.ddp_config.use_megatron_fsdp and not any(
            "step" in s for s in self.optimizer.state.values()
        ):
            return _state_dict_fresh(self)  # bug 1
        return orig_state_dict(self)

    orig_load_state_dict = DO.load_state_dict

    @functools.wraps(orig_load_state_dict)
    def load_state_dict(self, state_dict):
        orig_load_state_dict(self, state_dict)
        # bugs 3 and 4: one step tensor per parameter state, equal to the checkpoint's step.
        steps = {g.get("step") for g in state_dict.get("optimizer", {}).get("param_groups", [])}
        steps.discard(None)
        step = float(steps.pop()) if len(steps) == 1 else None
        for s in self.optimizer.state.values():
            if step is not None:
                s["step"] = torch.tensor(step, dtype=torch.float32)
            elif "step" in s:
                s["step"] = s["step"].detach().clone()

    orig_set_states = DO._set_main_param_and_optimizer_states

    @functools.wraps(orig_set_states)
    def _set_main_param_and_optimizer_states(self, model_param, tensors):
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return orig_set_states(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        state = self.optimizer.state[main_param]
        with torch.no_grad():  # bug 2: main params are views of leaves that require grad
            main_param.copy_(tensors["param"])
            for key, value in state.items():
                if key == "step":  # bug 3: not in the loaded tensors; set by load_state_dict
                    continue
                value.copy_(tensors[key])

    DO.state_dict = state_dict
    DO.load_state_dict = load_state_dict
    DO._set_main_param_and_optimizer_states = _set_main_param_and_optimizer_states
