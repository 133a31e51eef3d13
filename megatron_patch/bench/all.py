"""Run benchmarks one after the other and gather their structured results into one table.

Each benchmark is a function returning a dict (bench/model.py, bench/spec.py, bench/data.py);
`run_bench` times it and catches its failure, `rows` turns its result into (measurement, value)
pairs, and `summary_table` lays every benchmark out with the command that reproduces it.

    entry = run_bench("model", "python tools/bench_model.py", lambda: measure(...))
    print(summary_table([entry]))                                 # tools/bench_all.py
"""
import contextlib
import os
import platform
import signal
import threading
import time
import traceback
from typing import Callable, List, Optional, Tuple

BENCHES = ("model", "specs", "data")
TITLES = {"model": "model speed", "specs": "layer specs", "data": "data pipeline"}

Row = Tuple[str, str]


def model_rows(res: dict) -> List[Row]:
    """bench/model.py's result: tokens/s per K and the speed ratio."""
    rows_in = res.get("rows") or []
    if len(rows_in) < 2:
        raise ValueError("the model benchmark has fewer than two rows (K=1 and K)")
    setup = (f"{res['preset']}, T={res['positions']} x mbs {res['micro_batch_size']}, "
             f"{res['dtype']} on {res['device']}")
    rows = [(f"fwd+bwd tokens/s, K={r['patch_size']} ({setup})", f"{r['tokens_per_s']:,.0f}")
            for r in rows_in]
    K = rows_in[-1]["patch_size"]
    rows.append((f"speed ratio K={K} / K=1 (ideal {K})", f"{rows_in[-1]['ratio']:.2f}x"))
    return rows


def spec_rows(res: dict) -> List[Row]:
    """bench/spec.py's result: tokens/s, relative speed and memory per spec and T."""
    if not res.get("rows"):
        raise ValueError("the spec comparison has no rows")
    setup = f"{res['preset']}, K={res['patch_size']}, {res['dtype']} on {res['device']}"
    return [(f"spec {r['impl']}, T={r['positions']} ({setup})",
             f"{r['tokens_per_s']:,.0f} tok/s, {r['speed_vs_first']:.2f}x, "
             f"peak {r['peak_mib']:.0f} MiB, saved {r['saved_mib']:.0f} MiB")
            for r in res["rows"]]


def data_rows(res: dict) -> List[Row]:
    """bench/data.py's result: preprocessing rates, memory, sample-index builds."""
    from megatron_patch.bench.data import memory_sentence

    rows = []
    p = res.get("preprocess")
    if p:
        for r in p["rows"]:
            values = [f"wall s {r['wall_s']:.1f}", f"MB/s {r['mb_s']:.2f}",
                      f"tokens/s {r['tokens_per_s'] / 1e6:.2f}M", f"rate vs raw {r['rate_vs_raw']:.0%}",
                      f"CPU s {r['cpu_s']:.1f}", f"CPU vs raw {r['cpu_vs_raw']:.0%}"]
            if r["peak_rss_mib"] is not None:
                values.append(f"peak RSS {r['peak_rss_mib']:.0f} MiB")
            rows.append((f"preprocess: {r['what']}, {r['workers']} workers", "; ".join(values)))
        if p.get("memory"):
            rows.append(("preprocess memory", memory_sentence(p["memory"])))
    x = res.get("index")
    if x:
        for r in x["rows"]:
            rows.append((f"sample index: {r['builder']}",
                         f"seconds {r['seconds']:.3f}; vs megatron-core {r['vs_megatron_core']:.2f}x"))
    if not rows:
        raise ValueError("the data benchmark measured nothing (both parts skipped)")
    return rows


ROWS = {"model": model_rows, "specs": spec_rows, "data": data_rows}


@contextlib.contextmanager
def _deadline(seconds: Optional[float]):
    """TimeoutError in this (main) thread after `seconds`; children a benchmark started are its own."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"timed out after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_bench(name: str, command: str, fn: Callable[[], dict], timeout: Optional[float] = None) -> dict:
    """{"name", "command", "seconds", "result", "rows": [{"measurement", "value"}], "error"}.

    A benchmark that raises (or runs past `timeout` seconds) is reported in "error"; nothing
    propagates, so the next benchmark still runs."""
    entry = {"name": name, "command": command, "seconds": None, "result": None, "rows": [], "error": None}
    start = time.perf_counter()
    try:
        with _deadline(timeout):
            entry["result"] = fn()
        entry["rows"] = [{"measurement": m, "value": v} for m, v in ROWS[name](entry["result"])]
    except Exception as err:  # a benchmark's failure is a result of the run, not the end of it
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        entry["error"] = detail[-1500:]
    entry["seconds"] = round(time.perf_counter() - start, 1)
    return entry


def summary_table(entries: List[dict]) -> str:
    lines = ["| benchmark | measurement | value | command |", "|---|---|---|---|"]
    for e in entries:
        cmd = f"`{e['command']}`"
        if e["error"]:
            lines.append(f"| {TITLES[e['name']]} | FAILED | {e['error'].splitlines()[0][:200]} | {cmd} |")
            continue
        for i, r in enumerate(e["rows"]):
            lines.append(f"| {TITLES[e['name']] if i == 0 else ''} | {r['measurement']} | {r['value']} | "
                         f"{cmd if i == 0 else ''} |")
    return "\n".join(lines)


def host_info() -> dict:
    import torch

    from megatron_patch import device

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "machine": platform.machine()}
    if device.on_gpu():
        info["gpu"] = torch.cuda.get_device_name()
    return info
