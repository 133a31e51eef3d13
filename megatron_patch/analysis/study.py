"""The study grid: which two-stage runs to make and the tools/pretrain.py command of each.

A grid is the cross product of patch sizes K, patch fractions lambda, patch-stage batch
policies and the recipe knobs (`KNOBS`: patch-stage learning rates, token-stage warmup,
optimizer hand-over, K schedule, target weights, patch-mean dtype) at one token budget B (or,
with design "star", one axis at a time around a centre made of every axis's first value), plus
token-only controls at fractions of B (1.0x: the same data; 0.5x: the compute of K=4,
lambda=2/3). Extra seeds repeat chosen runs (by default the centre) to show the run-to-run
spread. Every run trains on the same corpus, tokenizer, model and flags, so the trainer's
token-level validation uses the same held-out split for all.

A run is finished when its compute account exists (`rundir.is_finished`: the trainer writes it
last); finished runs are skipped, and every launch passes `--save RUN_DIR --load RUN_DIR`, so an
interrupted run resumes from its last checkpoint.

    specs = build_grid(4_000_000, [2, 4, 8], [2 / 3])
    outcomes = launch_all(specs, runs_dir, logs_dir, common_flags(...))   # tools/study.py
    rows = write_report(specs, runs_dir, out_dir, setup)                  # results.csv/.md, plots
"""
import os
import subprocess
import sys
import time
import itertools
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from typing import Callable, Dict, List, Optional, Sequence

from megatron_patch import io
from megatron_patch.data.paths import check_data_paths
from megatron_patch.training import rundir

POLICIES = ("same_tokens", "same_sequences")
DESIGNS = ("cross", "star")
LAUNCHERS = ("torchrun", "python")
DEFAULT_PRETRAIN = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "tools", "pretrain.py"))
RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Flags the driver sets per run; passing them through would make runs disagree with the table.
MANAGED_FLAGS = ("--save", "--load", "--patch-size", "--patch-fraction", "--patch-batch-policy",
                 "--train-tokens", "--train-iters", "--stage", "--data-path", "--tokenizer-model",
                 "--model", "--patch-schedule")


@dataclass(frozen=True)
class Knob:
    """A recipe knob of tools/pretrain.py that the grid can vary (a RunSpec field)."""

    field: str
    """RunSpec field and results column."""
    flag: str
    """The tools/pretrain.py flag."""
    tag: str
    """Run-name prefix of a setting: "plr" -> "...-plr0.003"."""
    default: object
    """The trainer's value when the flag is left out (the paper's recipe)."""


KNOBS = (
    Knob("patch_lr", "--patch-lr", "plr", None),
    Knob("patch_min_lr", "--patch-min-lr", "pminlr", None),
    Knob("token_lr_warmup_iters", "--token-lr-warmup-iters", "twarm", None),
    Knob("handover_optimizer", "--handover-optimizer", "handover_", "reset"),
    Knob("patch_schedule", "--patch-schedule", "sched_", None),
    Knob("patch_target_decay", "--patch-target-decay", "decay", 1.0),
    Knob("patch_mean_dtype", "--patch-mean-dtype", "mean_", "fp32"),
)
KNOB_FIELDS = tuple(k.field for k in KNOBS)


def knob_text(knob: Knob, value) -> str:
    """A knob's value as it appears in a run name: 0.003 -> "0.003", "4:0.5,2:1/6" -> "K4x0.5-K2x0.1667"."""
    if knob.field == "patch_schedule":
        return "-".join(f"K{K}x{_short(f)}" for K, f in schedule_phases(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def schedule_phases(text: str) -> List[tuple]:
    """[(K, fraction)] of a --patch-schedule value (the trainer's own parser and checks)."""
    from megatron_patch.training.config import parse_patch_schedule

    return parse_patch_schedule(text)


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid."""

    name: str
    """Directory name under the runs directory, e.g. "K4-lam0.6667-same_tokens", "token-0.5x"."""
    kind: str
    """"patch" (patch stage then token stage) or "token" (token-only control)."""
    patch_size: int
    """K of the patch stage (1 for a control)."""
    patch_fraction: float
    """lambda (0 for a control)."""
    batch_policy: Optional[str]
    """Patch-stage batch policy (None for a control)."""
    train_tokens: int
    """Token budget of this run (controls: their fraction of the grid's budget)."""
    budget_fraction: float = 1.0
    """train_tokens / the grid's budget B."""
    patch_lr: Optional[float] = None
    """--patch-lr (None: not passed, the trainer's value: --lr)."""
    patch_min_lr: Optional[float] = None
    """--patch-min-lr (None: not passed)."""
    token_lr_warmup_iters: Optional[int] = None
    """--token-lr-warmup-iters (None: not passed)."""
    handover_optimizer: Optional[str] = None
    """--handover-optimizer reset|carry (None: not passed)."""
    patch_schedule: Optional[str] = None
    """--patch-schedule K:fraction,... (None: the single stage of K and lambda)."""
    patch_target_decay: Optional[float] = None
    """--patch-target-decay (None: not passed)."""
    patch_mean_dtype: Optional[str] = None
    """--patch-mean-dtype fp32|param (None: not passed)."""
    seed: Optional[int] = None
    """--seed (None: not passed)."""
    varies: Optional[str] = None
    """The knob field (or "seed") this run changes from the centre; None for the centre, the
    K / lambda / policy runs and the controls."""

    def pretrain_args(self) -> List[str]:
        args = ["--patch-size", str(self.patch_size), "--patch-fraction", repr(self.patch_fraction),
                "--train-tokens", str(self.train_tokens)]
        if self.batch_policy:
            args += ["--patch-batch-policy", self.batch_policy]
        for knob in KNOBS:
            value = getattr(self, knob.field)
            if value is not None:
                args += [knob.flag, repr(value) if isinstance(value, float) else str(value)]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        return args

    def to_dict(self) -> dict:
        return asdict(self)


def parse_fraction(text: str) -> float:
    """"2/3", "0.25" or "1" -> float (argparse type)."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{text!r} is not a number or fraction like 2/3") from None


def parse_tokens(text: str) -> int:
    """"4e6", "4000000" or "4M" -> int (argparse type)."""
    t = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}.get(t[-1:], 1)
    if scale != 1:
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a token count like 4e6, 4000000 or 4M") from None
    if value < 1 or value != int(value):
        raise ValueError(f"token budget must be a positive whole number, got {text!r}")
    return int(value)


def _short(x: float) -> str:
    """1.0 -> "1.0", 0.5 -> "0.5", 2/3 -> "0.6667"."""
    text = f"{x:.4g}"
    return text if any(c in text for c in ".e") else text + ".0"


def build_grid(
    train_tokens: int,
    patch_sizes: Sequence[int],
    patch_fractions: Sequence[float],
    policies: Sequence[str] = ("same_tokens",),
    controls: Sequence[float] = (1.0, 0.5),
    design: str = "cross",
    knobs: Optional[Dict[str, Sequence]] = None,
    seeds: Sequence[int] = (),
    seed_runs: Optional[Sequence[str]] = None,
) -> List[RunSpec]:
    """Controls first (largest budget first), then the patch runs, then the repeats.

    design="cross": every K x lambda x policy x knob setting, in the order given.
    design="star": one axis at a time around a centre made of the first K, the first lambda,
    the first policy and the first value of every knob axis: the centre under every policy,
    then every other K at the centre's lambda, then every other lambda at the centre's K, then
    every other value of each knob axis (all at the centre's other settings). Nine runs instead
    of 24 for 3 K, 4 lambda, 2 policies and 2 controls.

    knobs: {KNOBS field: [values]}; None as a value leaves the flag out (the trainer's value).
    A run's name says its settings that differ from the centre's (e.g. "-plr0.003",
    "-handover_carry", "-sched_K4x0.5-K2x0.1667"). A schedule sets the run's K to its first
    stage's and lambda to the sum of its fractions. Controls get no knob flags.
    seeds: the first seeds every run; each other seed repeats the runs named in `seed_runs`
    (default: the centre), named "...-seed5678".
    """
    if design not in DESIGNS:
        raise ValueError(f"--design must be one of {DESIGNS}, got {design!r}")
    if train_tokens < 1:
        raise ValueError(f"--train-tokens must be >= 1, got {train_tokens}")
    bad = [k for k in patch_sizes if not isinstance(k, int) or k < 2]
    if bad:
        raise ValueError(
            f"--patch-sizes must be integers >= 2, got {bad}; K=1 is token-level training, "
            "which the token-only controls (--controls) already cover"
        )
    bad = [lam for lam in patch_fractions if not 0.0 < lam <= 1.0]
    if bad:
        raise ValueError(f"--patch-fractions must be in (0, 1], got {bad}; lambda=0 is a control")
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise ValueError(f"--batch-policies must be among {POLICIES}, got {bad}")
    bad = [c for c in controls if not c > 0]
    if bad:
        raise ValueError(f"--controls are fractions of the budget and must be > 0, got {bad}")
    knobs = {f: list(v) for f, v in (knobs or {}).items() if v}
    unknown = sorted(set(knobs) - set(KNOB_FIELDS))
    if unknown:
        raise ValueError(f"unknown knob axes {unknown}; knobs: {', '.join(KNOB_FIELDS)}")
    for f, values in knobs.items():
        if len(set(values)) != len(values):
            raise ValueError(f"the {f} axis repeats a value ({values}); list each setting once")
    seed0 = seeds[0] if seeds else None
    specs = []
    for frac in sorted(set(controls), reverse=True):
        tokens = max(1, round(train_tokens * frac))
        specs.append(RunSpec(f"token-{_short(frac)}x", "token", 1, 0.0, None, tokens, frac, seed=seed0))
    centre = {f: values[0] for f, values in knobs.items()}

    def patch_run(K, lam, policy, settings=None, varies=None):
        settings = {**centre, **(settings or {})}
        if settings.get("patch_schedule") is not None:
            phases = schedule_phases(settings["patch_schedule"])
            K, lam = phases[0][0], sum(f for _, f in phases)
        name = f"K{K}-lam{_short(lam)}-{policy}"
        for knob in KNOBS:
            value = settings.get(knob.field)
            if value is not None and value != centre.get(knob.field):
                name += f"-{knob.tag}{knob_text(knob, value)}"
            elif value is None and centre.get(knob.field) is not None:
                name += f"-{knob.tag}default"
        return RunSpec(name, "patch", K, lam, policy, train_tokens, seed=seed0, varies=varies, **settings)

    if design == "cross":
        axes = list(knobs.items())
        for K, lam, p in itertools.product(patch_sizes, patch_fractions, policies):
            for combo in itertools.product(*[values for _, values in axes]):
                settings = {f: v for (f, _), v in zip(axes, combo)}
                changed = [f for f, v in settings.items() if v != centre[f]]
                specs.append(patch_run(K, lam, p, settings, changed[0] if len(changed) == 1 else None))
    elif patch_sizes and patch_fractions and policies:
        K0, lam0, p0 = patch_sizes[0], patch_fractions[0], policies[0]
        specs += [patch_run(K0, lam0, p) for p in policies]
        specs += [patch_run(K, lam0, p0) for K in patch_sizes[1:]]
        specs += [patch_run(K0, lam, p0) for lam in patch_fractions[1:]]
        for f, values in knobs.items():
            specs += [patch_run(K0, lam0, p0, {f: v}, f) for v in values[1:]]
    patch_runs = [s for s in specs if s.kind == "patch"]
    if seeds[1:]:
        wanted = list(seed_runs) if seed_runs else [patch_runs[0].name] if patch_runs else []
        known = {s.name: s for s in specs}
        missing = [n for n in wanted if n not in known]
        if missing:
            raise ValueError(f"--seed-runs {missing} are not runs of this grid; its runs: {', '.join(known)}")
        specs += [replace(known[n], name=f"{n}-seed{seed}", seed=seed, varies="seed")
                  for seed in seeds[1:] for n in wanted]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"the grid repeats runs {dupes}; list each K, lambda, policy, knob value and seed once")
    return specs


def knob_settings(spec: RunSpec) -> Dict[str, object]:
    """{knob field: value} of the knobs a run passes to the trainer."""
    return {k.field: getattr(spec, k.field) for k in KNOBS if getattr(spec, k.field) is not None}


def check_passthrough(extra: Sequence[str], axes: Sequence[str] = ()) -> None:
    """Reject flags the driver sets itself (they would silently make the runs differ): the
    managed ones, and the flags of the knob axes in use (`axes`: knob fields, or "seed")."""
    managed = set(MANAGED_FLAGS) | {k.flag for k in KNOBS if k.field in axes}
    if "seed" in axes:
        managed.add("--seed")
    clash = sorted({a.split("=")[0] for a in extra if a.split("=")[0] in managed})
    if clash:
        raise ValueError(
            f"do not pass {clash} after `--`: the study sets them per run "
            "(use --train-tokens, --patch-sizes, --patch-fractions, --batch-policies, --controls, "
            "the knob axes (--patch-lr, --handover-optimizer, --patch-schedule, ...), --seeds, "
            "--data-path, --tokenizer-model and --model of tools/study.py)"
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
