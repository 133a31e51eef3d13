"""Launching a study grid: the tools/pretrain.py command of each run, the checks before the
first launch, the launches, and the report.

The grid itself (which runs, `KNOBS`, `RunSpec`, `build_grid`) is `grid`'s and is re-exported
here; `results` reads the runs back and `plots` draws them (imported when the report is written,
so that neither imports this module and none of them imports matplotlib before it is needed).
Every run trains on the same corpus, tokenizer, model and flags, so the trainer's token-level
validation uses the same held-out split for all.

A run is finished when its compute account exists (`rundir.is_finished`: the trainer writes it
last); finished runs are skipped, and every launch passes `--save RUN_DIR --load RUN_DIR`, so an
interrupted run resumes from its last checkpoint.

    specs = build_grid(4_000_000, [2, 4, 8], [2 / 3], transfer_controls=[])
    outcomes = launch_all(specs, runs_dir, logs_dir, common_flags(...))   # tools/study.py
    rows = write_report(specs, runs_dir, out_dir, setup)                  # results.csv/.md, plots
"""
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from megatron_patch import io
from megatron_patch.analysis.grid import (  # noqa: F401  (re-exported: the grid's public names)
    ALONE_SUFFIX, AXES, DESIGNS, HANDOVER_FIELDS, KINDS, KNOB_FIELDS, KNOBS, PAIRED_AXES, POLICIES,
    Knob, RunSpec, axis_fields, axis_settings, build_grid, knob_settings, knob_text,
    parse_fraction, parse_shrink_perturb, parse_tokens, schedule_phases, transfer_control,
    transfer_controls_of,
)
from megatron_patch.data.paths import check_data_paths
from megatron_patch.training import rundir

LAUNCHERS = ("torchrun", "python")
DEFAULT_PRETRAIN = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "tools", "pretrain.py"))
RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Flags the driver sets per run; passing them through would make runs disagree with the table.
MANAGED_FLAGS = ("--save", "--load", "--patch-size", "--patch-fraction", "--patch-batch-policy",
                 "--train-tokens", "--train-iters", "--stage", "--data-path", "--tokenizer-model",
                 "--model", "--patch-schedule")
PLOT_HINT = ("tools/study.py draws its plots with matplotlib, which is not installed here: "
             "pip install matplotlib (pinned in requirements.txt)")


def check_plotting() -> None:
    """ValueError with the install hint when matplotlib cannot be imported: checked before the
    first launch, not after hours of training."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ValueError(f"{PLOT_HINT} ({err})") from None


def check_passthrough(extra: Sequence[str], axes: Sequence[str] = (), transfer_controls: bool = False) -> None:
    """Reject flags the driver sets itself (they would silently make the runs differ): the
    managed ones, the flags of the knob axes in use (`axes`: AXES names, or "seed"), and, with
    transfer controls, the hand-over flags (a control hands nothing over; give a one-value axis
    instead, e.g. --handover-reinit embedding)."""
    fields = {f for axis in axes for f in axis_fields(axis)}
    if transfer_controls:
        fields |= set(HANDOVER_FIELDS)
    managed = set(MANAGED_FLAGS) | {k.flag for k in KNOBS if k.field in fields}
    if "seed" in axes:
        managed.add("--seed")
    clash = sorted({a.split("=")[0] for a in extra if a.split("=")[0] in managed})
    if clash:
        raise ValueError(
            f"do not pass {clash} after `--`: the study sets them per run "
            "(use --train-tokens, --patch-sizes, --patch-fractions, --batch-policies, --controls, "
            "the knob axes (--patch-lr, --handover-optimizer, --handover-reinit, --patch-schedule, ...; "
            "one value sets it for every patch run), --seeds, --data-path, --tokenizer-model and "
            "--model of tools/study.py)"
        )


def launch_command(
    spec: RunSpec,
    run_dir: str,
    common: Sequence[str],
    nproc_per_node: int = 1,
    pretrain: Optional[str] = None,
    launcher: str = "torchrun",
    python: str = sys.executable,
) -> List[str]:
    """torchrun (as `python -m torch.distributed.run`, the same interpreter) + tools/pretrain.py;
    launcher "python" runs one plain process instead (a world of one, no rendezvous)."""
    pretrain = pretrain or DEFAULT_PRETRAIN
    if launcher == "torchrun":
        prefix = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                  str(nproc_per_node)]
    elif launcher == "python":
        if nproc_per_node != 1:
            raise ValueError("launcher 'python' runs one process; use torchrun for --nproc-per-node > 1")
        prefix = [python]
    else:
        raise ValueError(f"unknown launcher {launcher!r}; use torchrun or python")
    # `--save D --load D`: a fresh start for a new directory, a resume for an interrupted run.
    return [*prefix, os.path.normpath(pretrain), *common, "--save", run_dir, "--load", run_dir,
            *spec.pretrain_args()]


@dataclass
class Outcome:
    name: str
    status: str
    """"skipped" (already finished), "done", "failed"."""
    seconds: float = 0.0
    log: Optional[str] = None
    returncode: int = 0


def run_one(cmd: List[str], log_path: str, env: Optional[dict] = None) -> tuple:
    """Run a launch with its output appended to log_path; returns (returncode, seconds)."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    if env is None:  # the launch makes its own world: drop rendezvous variables this process carries
        env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}
    start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc.returncode, time.perf_counter() - start


def tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def precheck(specs: Sequence[RunSpec], runs_dir: str, common: Sequence[str], nproc_per_node: int) -> None:
    """Run the trainer's own setup checks (flags, files, tokenizer, stage plan) for every run
    before the first launch, so run 15 of a grid cannot fail on its config hours in.
    Raises ValueError naming the run. Only for this project's tools/pretrain.py."""
    from megatron_patch.training.config import parse_config
    from megatron_patch.training.preflight import resolve
    from megatron_patch.training.stages import plan_stages

    for spec in specs:
        run_dir = os.path.join(runs_dir, spec.name)
        argv = [*common, "--save", run_dir, "--load", run_dir, *spec.pretrain_args()]
        try:
            try:
                cfg = resolve(parse_config(argv))
            except SystemExit:  # argparse already printed what it rejected
                raise ValueError("tools/pretrain.py rejects these flags (see above)") from None
            par = cfg.parallel
            model_parallel = par.tensor_model_parallel_size * par.pipeline_model_parallel_size
            if nproc_per_node % model_parallel:
                raise ValueError(f"--nproc-per-node {nproc_per_node} is not a multiple of TP x PP "
                                 f"= {model_parallel}")
            plan_stages(cfg, nproc_per_node // model_parallel)
        except ValueError as err:
            raise ValueError(f"run {spec.name}: {err}") from None


def common_flags(data_path: Optional[Sequence[str]], tokenizer_model: Optional[str],
                 model: Optional[str], extra: Sequence[str] = ()) -> List[str]:
    """The tools/pretrain.py flags every run of the grid shares."""
    flags = []
    if data_path:
        flags += ["--data-path", *data_path]
    if tokenizer_model:
        flags += ["--tokenizer-model", tokenizer_model]
    if model:
        flags += ["--model", model]
    return flags + list(extra)


def check_inputs(pretrain: str, data_path: Optional[Sequence[str]], tokenizer_model: Optional[str],
                 nproc_per_node: int, launcher: str) -> None:
    """ValueError on what would fail every launch, before the first one."""
    if not os.path.isfile(pretrain):
        raise ValueError(f"trainer {pretrain} not found")
    if data_path:
        check_data_paths(data_path)
    if tokenizer_model and not os.path.isfile(tokenizer_model):
        raise ValueError(f"--tokenizer-model {tokenizer_model} not found")
    if nproc_per_node < 1:
        raise ValueError("--nproc-per-node must be >= 1")
    if launcher == "python" and nproc_per_node != 1:
        raise ValueError("--launcher python runs one process; use torchrun for --nproc-per-node > 1")


def launch_all(specs: Sequence[RunSpec], runs_dir: str, logs_dir: str, common: Sequence[str],
               nproc_per_node: int = 1, pretrain: Optional[str] = None, launcher: str = "torchrun",
               keep_going: bool = False, log: Callable[..., None] = print) -> List[Outcome]:
    """Launch every unfinished run in order; stops at the first failure unless keep_going.

    `log(line, error=False)` receives the progress lines (a failure with its log's tail)."""
    outcomes = []
    os.makedirs(runs_dir, exist_ok=True)
    for i, spec in enumerate(specs, 1):
        run_dir = os.path.join(runs_dir, spec.name)
        if rundir.is_finished(run_dir):
            log(f"[{i}/{len(specs)}] {spec.name}: finished, skipped")
            outcomes.append(Outcome(spec.name, "skipped"))
            continue
        cmd = launch_command(spec, run_dir, common, nproc_per_node, pretrain, launcher)
        log_path = os.path.join(logs_dir, f"{spec.name}.log")
        resumed = " (resuming)" if rundir.checkpoint_dirs(run_dir) else ""
        log(f"[{i}/{len(specs)}] {spec.name}{resumed}: log {log_path}")
        rc, seconds = run_one(cmd, log_path)
        ok = rc == 0 and rundir.is_finished(run_dir)
        outcomes.append(Outcome(spec.name, "done" if ok else "failed", seconds, log_path, rc))
        if ok:
            log(f"    done in {seconds:.1f} s")
            continue
        why = f"exit status {rc}" if rc else f"exit status 0 but no {rundir.COMPUTE_FILE}"
        log(f"    FAILED ({why}) after {seconds:.1f} s; last lines of {log_path}:\n{tail(log_path)}",
            error=True)
        if not keep_going:
            break
    return outcomes


def write_report(specs: Sequence[RunSpec], runs_dir: str, out_dir: str,
                 setup: Dict[str, str]) -> List[dict]:
    """OUT/results.csv, OUT/results.md and the plots from what the runs left; returns the rows."""
    from megatron_patch.analysis import plots, results

    rows = results.collect(specs, runs_dir)
    os.makedirs(out_dir, exist_ok=True)
    drawn = []
    if plots.plot_loss_vs_flops(rows, runs_dir, os.path.join(out_dir, plots.FLOPS_PLOT)):
        drawn.append(plots.FLOPS_PLOT)
    if plots.plot_loss_vs_k_lambda(rows, os.path.join(out_dir, plots.K_LAMBDA_PLOT)):
        drawn.append(plots.K_LAMBDA_PLOT)
    if plots.plot_knobs(rows, os.path.join(out_dir, plots.KNOBS_PLOT)):
        drawn.append(plots.KNOBS_PLOT)
    io.write_text(os.path.join(out_dir, "results.csv"), results.to_csv(rows))
    io.write_text(os.path.join(out_dir, "results.md"), results.to_markdown(rows, setup, drawn))
    return rows


def write_grid(path: str, specs: Sequence[RunSpec], runs_dir: str, common: Sequence[str],
               nproc_per_node: int) -> None:
    """OUT/grid.json: what the study launches (the runs and the shared flags)."""
    io.write_json(path, {"runs_dir": os.path.abspath(runs_dir), "common_flags": list(common),
                         "nproc_per_node": nproc_per_node, "runs": [s.to_dict() for s in specs]})
