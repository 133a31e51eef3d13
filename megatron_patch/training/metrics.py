"""Metrics of a run: one log line per log interval, the same numbers as JSON lines, and the reader.

Only global rank 0 writes (every rank computes the same reduced numbers). Records of
SAVE/metrics.jsonl (the demo, the study driver and resumes read them with `read_metrics`):

  {"kind": "train", "stage", "patch_size", "step", "train_iters", "loss", "lr", "grad_norm",
   "ms_per_step", "tokens_per_s", "tflops", "mfu", "mem_gib", "tokens", "flops", "wall_s"}
  {"kind": "eval", "stage", "patch_size", "step", "val_loss", "val_ppl", "tokens", "flops", "wall_s"}
  {"kind": "data", "stage", "patch_size", "step": 0, "samples", "epochs", "sources", "tokens", "flops",
   "wall_s"}
    (at a stage's start: how many passes over its share of the data the stage makes; `sources`:
    per --data-path prefix {"prefix", "samples", "share", "range_tokens"}, [] with mock data)
  {"kind": "exit", "stage", "patch_size", "step", "reason", "checkpoint", "tokens", "flops", "wall_s"}
    (the run stopped early on purpose after saving `checkpoint`: relaunch with --load)

`tokens`, `flops` and `wall_s` are cumulative over the run (all stages); tokens count K per
patch. `tflops` is model TFLOP/s per device (flops.py) and `mfu` that over the device's peak
(null when the peak is unknown, e.g. on CPU). `mem_gib`: peak GPU memory allocated on rank 0,
or the process's resident memory on CPU.
"""
import json
import os
from typing import List, Optional

from megatron_patch import io
from megatron_patch.training import rundir


DASHBOARDS_EXTRA = "megatron-patch[dashboards]"
"""The setup.py extra that installs TensorBoard and Weights & Biases."""


class MetricsError(ValueError):
    """A metrics.jsonl that cannot be read (a damaged line other than the last)."""


def _tensorboard_writer():
    """torch's SummaryWriter, or None when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def _wandb():
    try:
        import wandb
    except ImportError:
        return None
    return wandb


def check_dashboards(logging_cfg) -> None:
    """A dashboard that a flag asks for must be installed: ValueError naming the extra, raised at
    start on every rank alike (preflight), never a run that silently logs nowhere.

    Only TensorBoard's default (on, into SAVE/tensorboard) stays optional: without the package
    it is off, with one printed line saying so (MetricsLogger)."""
    if logging_cfg is None:
        return
    hint = f"pip install '{DASHBOARDS_EXTRA}'"
    if logging_cfg.tensorboard and logging_cfg.tensorboard_dir and _tensorboard_writer() is None:
        raise ValueError(f"--tensorboard-dir {logging_cfg.tensorboard_dir} asks for TensorBoard events, but the "
                         f"tensorboard package is not installed: {hint} (or pip install tensorboard), "
                         "or drop --tensorboard-dir")
    if logging_cfg.wandb_project and _wandb() is None:
        raise ValueError(f"--wandb-project {logging_cfg.wandb_project} needs the wandb package: {hint} "
                         "(or pip install wandb; WANDB_MODE=offline logs without a network), "
                         "or drop --wandb-project")


def read_metrics(path: str) -> List[dict]:
    """The records of a metrics.jsonl (or of RUN_DIR's); [] when there is none.

    Blank lines are skipped and a torn last line (a process killed mid-write) is ignored; any
    other line that is not JSON is an error naming the file and line."""
    if os.path.isdir(path):
        path = rundir.metrics_path(path)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise MetricsError(f"{path}:{i + 1}: not valid JSON ({line[:80]!r}); "
                               "remove or repair the line") from None
    return records


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def format_train(r: dict) -> str:
    width = len(str(r["train_iters"]))
    parts = [
        f"step {r['step']:>{width}}/{r['train_iters']}",
        f"stage {r['stage']} K={r['patch_size']}",
        f"loss {r['loss']:.4f}",
        f"lr {r['lr']:.2e}",
        f"grad {r['grad_norm']:.3f}",
        f"{r['ms_per_step']:.0f} ms/step",
        f"{_si(r['tokens_per_s'])} tok/s",
        f"{_si(r['tokens'])} tokens",
        f"{r['tflops']:.3g} TFLOP/s",
    ]
    if r["mfu"] is not None:
        parts.append(f"{100 * r['mfu']:.0f}% MFU")
    parts.append(f"{r['mem_gib']:.1f} GiB")
    return " | ".join(parts)


def format_eval(r: dict) -> str:
    return (f"eval step {r['step']} | stage {r['stage']} K={r['patch_size']} | "
            f"val loss {r['val_loss']:.4f} | val ppl {r['val_ppl']:.2f} (token level)")


def format_data(r: dict) -> str:
    repeat = " (the data repeats: more passes than one)" if r["epochs"] > 1.0 + 1e-9 else ""
    shares = r.get("sources") or []
    mix = (" | " + ", ".join(f"{os.path.basename(s['prefix'])} {s['share']:.1%}" for s in shares)
           if len(shares) > 1 else "")
    return (f"data | stage {r['stage']} K={r['patch_size']} | {r['samples']} samples = "
            f"{r['epochs']:.3g} epochs of its share of the data{repeat}{mix}")


def format_exit(r: dict) -> str:
    return (f"exit | stage {r['stage']} K={r['patch_size']} | step {r['step']} | {r['reason']} | "
            f"saved {r['checkpoint']}")


FORMATS = {"train": format_train, "eval": format_eval, "data": format_data, "exit": format_exit}


class MetricsLogger:
    """Log lines, SAVE/metrics.jsonl, TensorBoard and Weights & Biases, on global rank 0.

    Every record goes to every sink: the JSON lines are the source of truth, TensorBoard gets
    the numbers against cumulative tokens (stages with different K compare), W&B the records."""

    def __init__(self, run_dir: str, logging_cfg=None, run_config: Optional[dict] = None):
        import torch

        self.active = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        self.path = rundir.metrics_path(run_dir)
        self.tb = None
        self.wandb = None
        self._window = {"loss": 0.0, "steps": 0, "time": 0.0}
        check_dashboards(logging_cfg)  # every rank: a requested dashboard that cannot run is an error
        if not self.active:
            return
        os.makedirs(run_dir, exist_ok=True)
        if logging_cfg is None or logging_cfg.tensorboard:
            SummaryWriter = _tensorboard_writer()
            if SummaryWriter is not None:
                tb_dir = getattr(logging_cfg, "tensorboard_dir", None) or rundir.tensorboard_dir(run_dir)
                self.tb = SummaryWriter(tb_dir)
            elif logging_cfg is not None:  # the default, not a request: off, and said so
                self.print(f"TensorBoard events off: the tensorboard package is not installed "
                           f"(pip install '{DASHBOARDS_EXTRA}'; --no-tensorboard silences this)")
        if logging_cfg is not None and logging_cfg.wandb_project:
            self.wandb = _start_wandb(run_dir, logging_cfg, run_config)

    def print(self, line: str) -> None:
        if self.active:
            print(line, flush=True)

    def rewind(self, stage: str, step: int, later_stages) -> None:
        """Drop records a killed launch wrote after the checkpoint this launch resumes from (and
        a torn last line), so metrics.jsonl reads as one uninterrupted run."""
        if not self.active or not os.path.isfile(self.path):
            return
        records = read_metrics(self.path)
        keep = [r for r in records
                if not ((r.get("stage") == stage and r.get("step", 0) > step)
                        or r.get("stage") in later_stages)]
        with open(self.path, "rb") as f:
            torn = not f.read().endswith(b"\n") if os.path.getsize(self.path) else False
        if len(keep) != len(records) or torn:
            io.write_lines(self.path, (json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict) -> None:
        if not self.active:
            return
        self.print(FORMATS[record["kind"]](record))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        numbers = {f"{record['kind']}/{k}": v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k not in ("step", "patch_size", "tokens")}
        if self.tb is not None:
            for key, value in numbers.items():
                self.tb.add_scalar(key, value, record["tokens"])
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({**numbers, "tokens": record["tokens"], "stage": record["stage"]})

    def step(self, stage, state, result, seconds: float, step_flops: float, peak_tflops,
             world_size: int, log_interval: int) -> None:
        """Account one step; every log_interval steps (and at the stage's end) write a train record
        of the mean loss and the rates over the steps since the last one."""
        from megatron_patch import device

        w = self._window
        w["loss"] += result.loss
        w["steps"] += 1
        w["time"] += seconds
        if state.step % log_interval and state.step != stage.train_iters:
            return
        n, secs = w["steps"], max(w["time"], 1e-9)
        tflops = n * step_flops / secs / world_size / 1e12
        self.write({
            "kind": "train", "stage": stage.name, "patch_size": stage.patch_size,
            "step": state.step, "train_iters": stage.train_iters, "loss": w["loss"] / n,
            "lr": result.lr, "grad_norm": result.grad_norm, "ms_per_step": 1000.0 * secs / n,
            "tokens_per_s": n * stage.tokens_per_step / secs, "tflops": tflops,
            "mfu": tflops / peak_tflops if peak_tflops else None, "mem_gib": device.max_memory_gib(),
            **state.cumulative(),
        })
        self._window = {"loss": 0.0, "steps": 0, "time": 0.0}

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(run_dir: str, logging_cfg, run_config: Optional[dict]):
    wandb = _wandb()  # present: check_dashboards ran first
    save_dir = logging_cfg.wandb_save_dir or os.path.join(run_dir, "wandb")
    os.makedirs(save_dir, exist_ok=True)
    return wandb.init(project=logging_cfg.wandb_project,
                      name=logging_cfg.wandb_exp_name or os.path.basename(os.path.abspath(run_dir)),
                      dir=save_dir, config=run_config or {}, resume="allow")
