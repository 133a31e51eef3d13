"""The compute account of a run (SAVE/compute.json): FLOPs and time per stage against a
token-only run over the same tokens, the number that says what patch-level training saved.

    {"stages": [{stage, patch_size, steps, tokens, flops, wall_s, val_loss, val_ppl, settings}, ...],
     "total_flops", "token_only_flops", "ratio", "ideal_ratio", "final_val_loss", "final_val_ppl",
     "recipe"}

`settings` is the stage as planned (stages.Stage.to_dict(): K, steps, batch, data range, and
the knobs it trained with: lr, min_lr, lr_warmup_iters, carry_optimizer, target_decay,
mean_dtype); `recipe` the run's knobs as configured (stages.recipe). `ideal_ratio` is
lambda/K + 1 - lambda (summed over the patch stages of a K schedule). The file is written last,
so its presence marks a finished run.
"""
from megatron_patch import io
from megatron_patch.training import rundir
from megatron_patch.training.flops import token_only_flops
from megatron_patch.training.stages import ideal_ratio, recipe


def compute_account(cfg, state) -> dict:
    """FLOPs and wall time per stage against a token-only run over the same data."""
    stages = (state.history + [state.account()]) if state is not None else []
    total = sum(s["flops"] for s in stages)
    tp = cfg.parallel.tensor_model_parallel_size
    token_only = sum(token_only_flops(cfg.model, s["tokens"], cfg.train.seq_length, tp) for s in stages)
    return {
        "stages": stages,
        "total_flops": total,
        "token_only_flops": token_only,
        "ratio": total / token_only if token_only else None,
        "ideal_ratio": ideal_ratio(cfg),
        "final_val_loss": stages[-1].get("val_loss") if stages else None,
        "final_val_ppl": stages[-1].get("val_ppl") if stages else None,
        "recipe": recipe(cfg),
    }


def summary_lines(account: dict) -> list:
    lines = ["compute account (model FLOPs; wall time of training steps):"]
    for s in account["stages"]:
        lines.append(f"  {s['stage']:>5} K={s['patch_size']}: {s['steps']} steps, {s['tokens']:.4g} tokens, "
                     f"{s['flops']:.4g} FLOPs, {s['wall_s']:.1f} s")
    if account["ratio"] is not None:
        lines.append(f"  total {account['total_flops']:.4g} FLOPs = {account['ratio']:.3f} x a token-only "
                     f"run over the same data ({account['token_only_flops']:.4g}); "
                     f"ideal lambda/K + 1 - lambda = {account['ideal_ratio']:.3f}")
    if account["final_val_loss"] is not None:
        lines.append(f"  final token-level val loss {account['final_val_loss']:.4f}, "
                     f"ppl {account['final_val_ppl']:.2f}")
    return lines


def write_account(run_dir: str, account: dict) -> str:
    path = rundir.compute_path(run_dir)
    io.write_json(path, account)
    return path

