"""Run the project's benchmarks and gather their numbers into one table, each with its command.

- model speed: tools/bench_model.py --json (forward+backward tokens/s at K=1 and K, the ratio)
- layer specs: tools/bench_model.py --compare-specs 512 2048 --json (sdpa vs local spec)
- data pipeline: tools/bench_data.py (preprocessing rate, flat memory, sample-index build)

Each runs as a subprocess; its output is parsed (the last stdout line as JSON where the tool
has a JSON mode, Markdown tables otherwise) and summarised. A benchmark that fails is reported
and the others still run; the exit status is then 1.

    python tools/bench_all.py                          # everything, the documented sizes
    python tools/bench_all.py --only model specs --out docs/bench.json
    python tools/bench_all.py --quick                  # tiny sizes: checks the plumbing in ~1 min
    python tools/bench_all.py --model-args "--preset 370m --positions 2048"   # on a GPU

Sizes are the tools' own defaults unless --quick or --{model,specs,data}-args replace them.
"""
import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from megatron_patch.analysis.io import write_json  # noqa: E402

BENCHES = ("model", "specs", "data")
QUICK_ARGS = {
    "model": "--preset tiny --positions 32 --micro-batch-size 2 --iters 2 --warmup 1",
    "specs": "--preset tiny --micro-batch-size 1 --iters 1 --warmup 0",
    "data": ("--corpus-mb 1 --memory-corpus-mb 0 --workers 1 --repeats 1 --vocab-size 1000 "
             "--index-documents 20000 --index-tokens 2e6"),
}
QUICK_SPEC_POSITIONS = ["64"]
RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ----------------------------------------------------------------------------- commands


def commands(args) -> dict:
    """name -> argv of each selected benchmark."""
    py = [sys.executable]
    tools = ROOT / "tools"

    def extra(name):
        given = getattr(args, f"{name}_args")
        if given is not None:
            return shlex.split(given)
        return shlex.split(QUICK_ARGS[name]) if args.quick else []

    cmds = {
        "model": py + [str(tools / "bench_model.py"), *extra("model"), "--json"],
        "specs": py + [str(tools / "bench_model.py"), *extra("specs"), "--compare-specs",
                       *(QUICK_SPEC_POSITIONS if args.quick else ["512", "2048"]), "--json"],
        "data": py + [str(tools / "bench_data.py"), "--work-dir", args.data_work_dir, *extra("data")],
    }
    return {name: cmds[name] for name in args.only}


def display(cmd) -> str:
    """The command as a user would type it from the repository root."""
    parts = ["python" if c == sys.executable else os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c
             for c in cmd]
    return " ".join(shlex.quote(p) for p in parts)


# ----------------------------------------------------------------------------- parsing


def last_json(stdout: str):
    """The JSON object on the last non-empty stdout line (bench_model's --json contract)."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise ValueError("no output")
    try:
        obj = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise ValueError(f"last line is not JSON: {lines[-1][:200]!r}") from None
    if not isinstance(obj, dict):
        raise ValueError("last line is JSON but not an object")
    return obj


def parse_model(stdout: str):
    res = last_json(stdout)
    rows_in = res.get("rows") or []
    if len(rows_in) < 2:
        raise ValueError("bench_model JSON has fewer than two rows (K=1 and K)")
    setup = (f"{res.get('preset')}, T={res.get('positions')} x mbs {res.get('micro_batch_size')}, "
             f"{res.get('dtype')} on {res.get('device')}")
    rows = [(f"fwd+bwd tokens/s, K={r['patch_size']} ({setup})", f"{r['tokens_per_s']:,.0f}")
            for r in rows_in]
    K = rows_in[-1]["patch_size"]
    rows.append((f"speed ratio K={K} / K=1 (ideal {K})", f"{rows_in[-1]['ratio']:.2f}x"))
    return res, rows


def parse_specs(stdout: str):
    res = last_json(stdout)
    if not res.get("rows"):
        raise ValueError("compare-specs JSON has no rows")
    setup = f"{res.get('preset')}, K={res.get('patch_size')}, {res.get('dtype')} on {res.get('device')}"
    rows = []
    for r in res["rows"]:
        rows.append((f"spec {r['impl']}, T={r['positions']} ({setup})",
                     f"{r['tokens_per_s']:,.0f} tok/s, {r['speed_vs_first']:.2f}x, "
                     f"peak {r['peak_mib']:.0f} MiB, saved {r['saved_mib']:.0f} MiB"))
    return res, rows


_NUM = re.compile(r"^[-+]?[\d.,]+(e[-+]?\d+)?\s*[%xMKkG]?$")


def markdown_tables(text: str) -> list:
    """[{"caption", "header", "rows"}] of the Markdown tables in `text` (caption: the last
    non-empty line before the table)."""
    tables, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):
            header = [c.strip() for c in line.strip("|").split("|")]
            caption = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            rows, i = [], i + 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                rows.append(dict(zip(header, cells)))
                i += 1
            tables.append({"caption": caption, "header": header, "rows": rows})
        else:
            i += 1
    return tables


def parse_data(stdout: str):
    """bench_data.py: JSON on the last line if it grows a --json mode, else its Markdown tables
    (plus its `Memory:` sentence)."""
    try:
        res = last_json(stdout)
    except ValueError:
        res = None
    if res is not None:
        rows = [(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in res.items()]
        return res, rows
    tables = markdown_tables(stdout)
    if not tables:
        raise ValueError("bench_data printed no Markdown table")
    rows = []
    for t in tables:
        kind = "sample index" if "index" in t["caption"].lower() else "preprocess"
        for r in t["rows"]:
            labels = [f"{h} {v}" if h == "workers" else v for h, v in r.items() if not _NUM.match(v)]
            values = [f"{h} {v}" for h, v in r.items() if _NUM.match(v) and h != "workers"]
            workers = [f"{r['workers']} workers"] if "workers" in r else []
            rows.append((f"{kind}: " + ", ".join(labels + workers), "; ".join(values)))
    for line in stdout.splitlines():
        if line.startswith("Memory:"):
            rows.append(("preprocess memory", line[len("Memory:"):].strip()))
    return {"tables": tables, "text": stdout}, rows


PARSERS = {"model": parse_model, "specs": parse_specs, "data": parse_data}
TITLES = {"model": "model speed", "specs": "layer specs", "data": "data pipeline"}


# ----------------------------------------------------------------------------- running


def run_bench(name: str, cmd: list, timeout: float) -> dict:
    # Each benchmark is a world of one of its own: drop rendezvous variables this process may carry.
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    start = time.perf_counter()
    entry = {"name": name, "command": display(cmd), "returncode": None, "seconds": None,
             "result": None, "rows": [], "error": None}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        entry["error"] = f"timed out after {timeout:.0f} s"
        return entry
    entry["seconds"] = round(time.perf_counter() - start, 1)
    entry["returncode"] = proc.returncode
    if proc.returncode:
        entry["error"] = f"exit status {proc.returncode}: {proc.stderr.strip()[-1500:]}"
        return entry
    try:
        entry["result"], rows = PARSERS[name](proc.stdout)
        entry["rows"] = [{"measurement": m, "value": v} for m, v in rows]
    except (ValueError, KeyError, TypeError) as err:
        entry["error"] = f"could not parse the output ({err}); stdout tail: {proc.stdout[-500:]!r}"
    return entry


def summary_table(entries: list) -> str:
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

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "machine": platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def get_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a plumbing check, not numbers)")
    ap.add_argument("--out", help="write the gathered results as JSON here (e.g. docs/bench.json)")
    ap.add_argument("--data-work-dir", help="bench_data.py --work-dir (default: a temporary directory)")
    for name in BENCHES:
        ap.add_argument(f"--{name}-args", help=f"replace the size flags of the {name} benchmark (one string)")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per benchmark")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = get_args(argv)
    tmp = None
    if "data" in args.only and not args.data_work_dir:
        tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
        args.data_work_dir = tmp.name
    try:
        entries = []
        for name, cmd in commands(args).items():
            print(f"running {TITLES[name]}: {display(cmd)}", file=sys.stderr, flush=True)
            entries.append(run_bench(name, cmd, args.timeout))
            e = entries[-1]
            print(f"  {'FAILED: ' + e['error'] if e['error'] else 'done'} ({e['seconds']} s)",
                  file=sys.stderr, flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(summary_table(entries))
    if args.out:
        write_json(args.out, {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick,
                              "host": host_info(), "benchmarks": entries})
    return 1 if any(e["error"] for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
