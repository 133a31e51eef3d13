"""One log line per log interval, the same numbers as JSON lines, TensorBoard when installed.

Only global rank 0 writes (every rank computes the same reduced numbers). Records of
SAVE/metrics.jsonl (the demo and the study driver read these fields):

  {"kind": "train", "stage", "patch_size", "step", "train_iters", "loss", "lr", "grad_norm",
   "tokens_per_s", "tflops", "mfu", "mem_gib", "tokens", "flops", "wall_s"}
  {"kind": "eval", "stage", "patch_size", "step", "val_loss", "val_ppl", "tokens", "flops", "wall_s"}

`tokens`, `flops` and `wall_s` are cumulative over the run (all stages); tokens count K per
patch. `tflops` is model TFLOP/s per device (flops.py) and `mfu` that over the device's peak
(null when the peak is unknown, e.g. on CPU). `mem_gib`: peak GPU memory allocated on rank 0,
or the process's resident memory on CPU.
"""
import json
import os

import torch


def memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.1f}"


def format_train(r: dict) -> str:
    width = len(str(r["train_iters"]))
    parts = [
        f"step {r['step']:>{width}}/{r['train_iters']}",
        f"stage {r['stage']} K={r['patch_size']}",
        f"loss {r['loss']:.4f}",
        f"lr {r['lr']:.2e}",
        f"grad {r['grad_norm']:.3f}",
        f"{_si(r['tokens_per_s'])} tok/s",
        f"{r['tflops']:.3g} TFLOP/s",
    ]
    if r["mfu"] is not None:
        parts.append(f"{100 * r['mfu']:.0f}% MFU")
    parts.append(f"{r['mem_gib']:.1f} GiB")
    return " | ".join(parts)


def format_eval(r: dict) -> str:
    return (f"eval step {r['step']} | stage {r['stage']} K={r['patch_size']} | "
            f"val loss {r['val_loss']:.4f} | val ppl {r['val_ppl']:.2f} (token level)")


class MetricsLogger:
    """Writes log lines, SAVE/metrics.jsonl and TensorBoard scalars on global rank 0."""

    def __init__(self, run_dir: str, tensorboard: bool = True):
        self.active = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.tb = None
        if self.active:
            os.makedirs(run_dir, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:  # tensorboard is optional
                    SummaryWriter = None
                if SummaryWriter is not None:
                    self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def print(self, line: str) -> None:
        if self.active:
            print(line, flush=True)

    def rewind(self, stage: str, step: int, later_stages) -> None:
        """Drop records a crashed launch wrote after the checkpoint this launch resumes from."""
        if not self.active or not os.path.isfile(self.path):
            return
        with open(self.path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        keep = [r for r in records
                if not ((r["stage"] == stage and r["step"] > step) or r["stage"] in later_stages)]
        if len(keep) != len(records):
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in keep)
            os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.active:
            return
        self.print(format_train(record) if record["kind"] == "train" else format_eval(record))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            x = record["tokens"]  # tokens on the x axis: stages with different K compare
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "patch_size", "tokens"):
                    self.tb.add_scalar(f"{record['kind']}/{key}", value, x)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
