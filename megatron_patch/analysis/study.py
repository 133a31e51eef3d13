"""The study grid: which two-stage runs to make and the tools/pretrain.py command of each.

A grid is the cross product of patch sizes K, patch fractions lambda and patch-stage batch
policies at one token budget B (or, with design "star", one axis at a time around a centre), plus token-only controls at fractions of B (1.0x: the same
data; 0.5x: the compute of K=4, lambda=2/3). Every run trains on the same corpus, tokenizer,
model and flags, so the trainer's token-level validation uses the same held-out split for all.

A run is finished when RUN_DIR/compute.json exists (the trainer writes it last); finished runs
are skipped, unfinished ones are relaunched with `--load RUN_DIR` when they left a checkpoint.
"""
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import List, Optional, Sequence

POLICIES = ("same_tokens", "same_sequences")
DESIGNS = ("cross", "star")
TRACKER = "latest_checkpointed_iteration.txt"
RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Flags the driver sets per run; passing them through would make runs disagree with the table.
MANAGED_FLAGS = ("--save", "--load", "--patch-size", "--patch-fraction", "--patch-batch-policy",
                 "--train-tokens", "--train-iters", "--stage", "--data-path", "--tokenizer-model",
                 "--model")


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

    def pretrain_args(self) -> List[str]:
        args = ["--patch-size", str(self.patch_size), "--patch-fraction", repr(self.patch_fraction),
                "--train-tokens", str(self.train_tokens)]
        if self.batch_policy:
            args += ["--patch-batch-policy", self.batch_policy]
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
) -> List[RunSpec]:
    """Controls first (largest budget first), then the patch runs.

    design="cross": every K x lambda x policy, in the order given.
    design="star": one axis at a time around a centre made of the first K, the first lambda and
    the first policy: the centre under every policy, then every other K at the centre's lambda,
    then every other lambda at the centre's K (both with the first policy). Nine runs instead of
    24 for 3 K, 4 lambda, 2 policies and 2 controls.
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
    specs = []
    for frac in sorted(set(controls), reverse=True):
        tokens = max(1, round(train_tokens * frac))
        specs.append(RunSpec(f"token-{_short(frac)}x", "token", 1, 0.0, None, tokens, frac))
    def patch_run(K, lam, policy):
        return RunSpec(f"K{K}-lam{_short(lam)}-{policy}", "patch", K, lam, policy, train_tokens)

    if design == "cross":
        specs += [patch_run(K, lam, p) for K in patch_sizes for lam in patch_fractions for p in policies]
    elif patch_sizes and patch_fractions and policies:
        K0, lam0, p0 = patch_sizes[0], patch_fractions[0], policies[0]
        specs += [patch_run(K0, lam0, p) for p in policies]
        specs += [patch_run(K, lam0, p0) for K in patch_sizes[1:]]
        specs += [patch_run(K0, lam, p0) for lam in patch_fractions[1:]]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"the grid repeats runs {dupes}; list each K, lambda and policy once")
    return specs


def check_passthrough(extra: Sequence[str]) -> None:
    """Reject flags the driver sets itself (they would silently make the runs differ)."""
    clash = sorted({a.split("=")[0] for a in extra if a.split("=")[0] in MANAGED_FLAGS})
    if clash:
        raise ValueError(
            f"do not pass {clash} after `--`: the study sets them per run "
            "(use --train-tokens, --patch-sizes, --patch-fractions, --batch-policies, --controls, "
            "--data-path, --tokenizer-model and --model of tools/study.py)"
        )


def is_finished(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "compute.json"))


def has_checkpoint(run_dir: str) -> bool:
    """True when a stage of the run left a checkpoint to resume from."""
    if not os.path.isdir(run_dir):
        return False
    return any(os.path.isfile(os.path.join(run_dir, d, TRACKER)) for d in os.listdir(run_dir))


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
    pretrain = pretrain or os.path.join(os.path.dirname(__file__), "..", "..", "tools", "pretrain.py")
    if launcher == "torchrun":
        prefix = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                  str(nproc_per_node)]
    elif launcher == "python":
        if nproc_per_node != 1:
            raise ValueError("launcher 'python' runs one process; use torchrun for --nproc-per-node > 1")
        prefix = [python]
    else:
        raise ValueError(f"unknown launcher {launcher!r}; use torchrun or python")
    cmd = [*prefix, os.path.normpath(pretrain), *common, "--save", run_dir, *spec.pretrain_args()]
    if has_checkpoint(run_dir):
        cmd += ["--load", run_dir]
    return cmd


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
    from megatron_patch.training.loop import resolve
    from megatron_patch.training.stages import plan_stages

    for spec in specs:
        argv = [*common, "--save", os.path.join(runs_dir, spec.name), *spec.pretrain_args()]
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
