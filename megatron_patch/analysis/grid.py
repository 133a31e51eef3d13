"""The study grid as data: the recipe knobs it can vary (`KNOBS`), one run (`RunSpec`) and the
grid of runs (`build_grid`). No launching, no reading of runs, no plotting: `study` launches the
runs, `results` reads them back, `plots` draws them, `regime` compares several studies; all of
them import this module and it imports none of them (no import cycle).

A grid is the cross product of patch sizes K, patch fractions lambda, patch-stage batch
policies and the recipe knobs (patch-stage learning rates, token-stage warmup, the hand-over:
optimizer, re-initialised groups, shrink and perturb, LR schedule scope; the output-projection
init; K schedule, target weights, patch-mean dtype) at one token budget B (or, with design
"star", one axis at a time around a centre made of every axis's first value), plus token-only
controls at fractions of B (1.0x: the same data; 0.5x: the compute of K=4, lambda=2/3), plus,
with `transfer_controls`, the transfer control of each patch run: its token stage alone (the same
data slice, steps, batch, schedule and warmup) from a fresh init. Extra seeds repeat chosen runs
(by default the centre) to show the run-to-run spread.
"""
import itertools
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

POLICIES = ("same_tokens", "same_sequences")
DESIGNS = ("cross", "star")
KINDS = ("patch", "token", "alone")
"""RunSpec.kind: a two-stage run, a token-only control, the transfer control of a patch run."""
ALONE_SUFFIX = "-alone"
"""A transfer control's name: its patch run's name + this."""


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
    # the hand-over variants and the init (issue 19)
    Knob("handover_reinit", "--handover-reinit", "reinit_", None),
    Knob("handover_shrink", "--handover-shrink", "shrink", 1.0),
    Knob("handover_perturb", "--handover-perturb", "perturb", 0.0),
    Knob("lr_schedule_scope", "--lr-schedule-scope", "lrscope_", "stage"),
    Knob("output_proj_init", "--output-proj-init", "oproj_", "scaled"),
)
KNOB_FIELDS = tuple(k.field for k in KNOBS)
PAIRED_AXES = {"handover_shrink_perturb": ("handover_shrink", "handover_perturb")}
"""Axes that set several knobs at once: one value is one setting of all of them. Shrink and
perturb (theta <- alpha * theta + sigma * theta_fresh) make sense only together, so a study
varies them as pairs "ALPHA:SIGMA" (tools/study.py --handover-shrink-perturb 1:0 0.5:0.5)."""
AXES = KNOB_FIELDS + tuple(PAIRED_AXES)
HANDOVER_FIELDS = ("handover_optimizer", "handover_reinit", "handover_shrink", "handover_perturb")
"""What a hand-over does to the patch stage's weights and optimizer: a transfer control (a fresh
init, nothing handed over) leaves them out and passes --handover-reinit all."""


def axis_fields(axis: Optional[str]) -> Tuple[str, ...]:
    """The knob fields an axis (a knob field, a PAIRED_AXES name, "seed" or None) sets."""
    if axis is None:
        return ()
    return PAIRED_AXES.get(axis, (axis,))


def axis_settings(axis: str, value) -> Dict[str, object]:
    """{knob field: value} of one value of an axis; a paired axis's value is a tuple (or None:
    leave all its flags out)."""
    fields = axis_fields(axis)
    if len(fields) == 1:
        return {axis: value}
    values = tuple(value) if value is not None else (None,) * len(fields)
    if len(values) != len(fields):
        raise ValueError(f"the {axis} axis takes {len(fields)} values per setting, got {value!r}")
    return dict(zip(fields, values))


def parse_shrink_perturb(text: str) -> Optional[Tuple[float, float]]:
    """"0.5:0.5" -> (0.5, 0.5) (alpha, sigma); "none" -> None (argparse type)."""
    if text.strip().lower() == "none":
        return None
    alpha, sep, sigma = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(alpha), float(sigma)
    except ValueError:
        raise ValueError(f"{text!r} is not ALPHA:SIGMA (shrink and perturb), e.g. 0.5:0.5, or none") from None


def knob_text(knob: Knob, value) -> str:
    """A knob's value as it appears in a run name: 0.003 -> "0.003", "4:0.5,2:1/6" -> "K4x0.5-K2x0.1667",
    "embedding,out_proj" -> "embedding+out_proj"."""
    if knob.field == "patch_schedule":
        return "-".join(f"K{K}x{_short(f)}" for K, f in schedule_phases(value))
    if knob.field == "handover_reinit":
        return "+".join(g.strip() for g in str(value).split(","))
    return f"{value:g}" if isinstance(value, float) else str(value)


def schedule_phases(text: str) -> List[tuple]:
    """[(K, fraction)] of a --patch-schedule value (the trainer's own parser and checks)."""
    from megatron_patch.training.config import parse_patch_schedule

    return parse_patch_schedule(text)


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid."""

    name: str
    """Directory name under the runs directory, e.g. "K4-lam0.6667-same_tokens", "token-0.5x",
    "K4-lam0.6667-same_tokens-alone"."""
    kind: str
    """"patch" (patch stage then token stage), "token" (token-only control) or "alone" (the
    transfer control of patch run `transfer_of`: its token stage alone, from a fresh init)."""
    patch_size: int
    """K of the patch stage (1 for a control; an "alone" run keeps its patch run's K and lambda,
    which place its token stage)."""
    patch_fraction: float
    """lambda (0 for a control)."""
    batch_policy: Optional[str]
    """Patch-stage batch policy (None for a control)."""
    train_tokens: int
    """Token budget of this run (controls: their fraction of the grid's budget; an "alone" run:
    its patch run's budget, of which it trains the token stage's share)."""
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
    handover_reinit: Optional[str] = None
    """--handover-reinit GROUPS (comma-separated; None: not passed, nothing re-initialised)."""
    handover_shrink: Optional[float] = None
    """--handover-shrink ALPHA (None: not passed, 1.0)."""
    handover_perturb: Optional[float] = None
    """--handover-perturb SIGMA (None: not passed, 0.0)."""
    lr_schedule_scope: Optional[str] = None
    """--lr-schedule-scope stage|run (None: not passed, one schedule per stage)."""
    output_proj_init: Optional[str] = None
    """--output-proj-init scaled|plain (None: not passed, megatron-core's scaled init)."""
    seed: Optional[int] = None
    """--seed (None: not passed)."""
    varies: Optional[str] = None
    """The axis (a knob field, a PAIRED_AXES name, or "seed") this run changes from the centre;
    None for the centre, the K / lambda / policy runs and the controls. An "alone" run has its
    patch run's."""
    transfer_of: Optional[str] = None
    """Kind "alone": the name of the patch run whose token stage it trains alone."""

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
        if self.kind == "alone":
            args += ["--stage", "token"]
        return args

    def to_dict(self) -> dict:
        return asdict(self)


def transfer_control(spec: RunSpec) -> RunSpec:
    """The transfer control of patch run `spec`: the same flags, in its own run directory, plus
    `--stage token --handover-reinit all`: exactly the patch run's token stage (data slice, steps,
    batch, LR schedule, warmup) from a fresh init. The hand-over knobs (optimizer carry-over,
    shrink and perturb) are left out: nothing is handed over."""
    if spec.kind != "patch":
        raise ValueError(f"{spec.name} is a {spec.kind} run; only a patch run has a transfer control")
    return replace(spec, name=spec.name + ALONE_SUFFIX, kind="alone", transfer_of=spec.name,
                   handover_optimizer=None, handover_reinit="all", handover_shrink=None,
                   handover_perturb=None)


def control_key(spec: RunSpec) -> tuple:
    """What a transfer control trains (its trainer flags): equal keys, the same run."""
    return tuple(spec.pretrain_args())


def transfer_controls_of(specs: Sequence[RunSpec]) -> Dict[str, str]:
    """{patch run name: name of the grid's transfer control of it} (patch runs without one are
    left out). Patch runs that differ only in the hand-over share their control."""
    by_key = {control_key(s): s.name for s in specs if s.kind == "alone"}
    out = {}
    for s in specs:
        if s.kind == "patch":
            name = by_key.get(control_key(transfer_control(s)))
            if name is not None:
                out[s.name] = name
    return out


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
    transfer_controls: Optional[Sequence[str]] = None,
) -> List[RunSpec]:
    """Controls first (largest budget first), then the patch runs, then the repeats; each
    transfer control right after its patch run.

    design="cross": every K x lambda x policy x knob setting, in the order given.
    design="star": one axis at a time around a centre made of the first K, the first lambda,
    the first policy and the first value of every knob axis: the centre under every policy,
    then every other K at the centre's lambda, then every other lambda at the centre's K, then
    every other value of each knob axis (all at the centre's other settings). Nine runs instead
    of 24 for 3 K, 4 lambda, 2 policies and 2 controls.

    knobs: {axis: [values]}, an axis being a KNOBS field or a PAIRED_AXES name (whose values are
    tuples, one per field, e.g. (0.5, 0.5) for handover_shrink_perturb); None as a value leaves
    the flag(s) out (the trainer's value). A run's name says its settings that differ from the
    centre's (e.g. "-plr0.003", "-handover_carry", "-sched_K4x0.5-K2x0.1667",
    "-shrink0.5-perturb0.5", "-reinit_embedding+out_proj"). A schedule sets the run's K to its
    first stage's and lambda to the sum of its fractions. Controls get no knob flags.
    seeds: the first seeds every run; each other seed repeats the runs named in `seed_runs`
    (default: the centre), named "...-seed5678".
    transfer_controls: None: none; empty: one for every patch run (repeats included); names: for
    those patch runs. Each is named "<patch run>-alone" (`transfer_control`) and follows its patch
    run. Patch runs that differ only in the hand-over (optimizer, re-init, shrink and perturb)
    share the first one's control (`transfer_controls_of` maps each patch run to its control).
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
    knobs = {f: [tuple(v) if isinstance(v, list) else v for v in values]
             for f, values in (knobs or {}).items() if values}
    unknown = sorted(set(knobs) - set(AXES))
    if unknown:
        raise ValueError(f"unknown knob axes {unknown}; knobs: {', '.join(AXES)}")
    for f, values in knobs.items():
        if len(set(values)) != len(values):
            raise ValueError(f"the {f} axis repeats a value ({values}); list each setting once")
    for paired, fields in PAIRED_AXES.items():
        both = [f for f in fields if f in knobs]
        if paired in knobs and both:
            raise ValueError(f"the {paired} axis sets {', '.join(fields)}; do not vary {both} beside it")
    seed0 = seeds[0] if seeds else None
    specs = []
    for frac in sorted(set(controls), reverse=True):
        tokens = max(1, round(train_tokens * frac))
        specs.append(RunSpec(f"token-{_short(frac)}x", "token", 1, 0.0, None, tokens, frac, seed=seed0))
    centre = {}
    for axis, values in knobs.items():
        centre.update(axis_settings(axis, values[0]))

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
                settings = {}
                for (axis, _), v in zip(axes, combo):
                    settings.update(axis_settings(axis, v))
                changed = [axis for (axis, values), v in zip(axes, combo) if v != values[0]]
                specs.append(patch_run(K, lam, p, settings, changed[0] if len(changed) == 1 else None))
    elif patch_sizes and patch_fractions and policies:
        K0, lam0, p0 = patch_sizes[0], patch_fractions[0], policies[0]
        specs += [patch_run(K0, lam0, p) for p in policies]
        specs += [patch_run(K, lam0, p0) for K in patch_sizes[1:]]
        specs += [patch_run(K0, lam, p0) for lam in patch_fractions[1:]]
        for axis, values in knobs.items():
            specs += [patch_run(K0, lam0, p0, axis_settings(axis, v), axis) for v in values[1:]]
    patch_runs = [s for s in specs if s.kind == "patch"]
    if seeds[1:]:
        wanted = list(seed_runs) if seed_runs else [patch_runs[0].name] if patch_runs else []
        known = {s.name: s for s in specs}
        missing = [n for n in wanted if n not in known]
        if missing:
            raise ValueError(f"--seed-runs {missing} are not runs of this grid; its runs: {', '.join(known)}")
        specs += [replace(known[n], name=f"{n}-seed{seed}", seed=seed, varies="seed")
                  for seed in seeds[1:] for n in wanted]
    if transfer_controls is not None:
        patch_names = [s.name for s in specs if s.kind == "patch"]
        wanted = list(transfer_controls) or patch_names
        missing = [n for n in wanted if n not in patch_names]
        if missing:
            raise ValueError(f"--transfer-controls {missing} are not patch runs of this grid; its patch "
                             f"runs: {', '.join(patch_names)}")
        # Patch runs that differ only in what the hand-over does share one control: their token
        # stages alone are the same training.
        with_controls, made = [], set()
        for s in specs:
            with_controls.append(s)
            if s.name in wanted:
                control = transfer_control(s)
                if control_key(control) not in made:
                    made.add(control_key(control))
                    with_controls.append(control)
        specs = with_controls
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"the grid repeats runs {dupes}; list each K, lambda, policy, knob value and seed once")
    return specs


def knob_settings(spec: RunSpec) -> Dict[str, object]:
    """{knob field: value} of the knobs a run passes to the trainer."""
    return {k.field: getattr(spec, k.field) for k in KNOBS if getattr(spec, k.field) is not None}
