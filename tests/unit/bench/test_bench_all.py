"""megatron_patch.bench.all and tools/bench_all.py: rows from structured benchmark results, the
summary table, failures and timeouts, the data benchmark's Markdown, and a real
`--quick --only model` run (a few seconds)."""
import json
import os
import subprocess
import sys
import time

import pytest

from megatron_patch.bench import all as bench_all
from megatron_patch.bench.data import format_markdown
from megatron_patch.cli import bench_all as cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

MODEL = {
    "preset": "cpu-small", "impl": "auto", "positions": 256, "micro_batch_size": 4,
    "dtype": "float32", "device": "cpu", "iters": 10, "params_m": 10.3,
    "rows": [{"patch_size": 1, "step_s": 1.0, "tokens_per_s": 1024.0, "ratio": 1.0},
             {"patch_size": 4, "step_s": 1.1, "tokens_per_s": 3723.6, "ratio": 3.636}]}

SPECS = {
    "preset": "cpu-small", "patch_size": 4, "micro_batch_size": 1, "dtype": "float32",
    "device": "cpu", "threads": 2, "iters": 3,
    "rows": [{"positions": 512, "impl": "sdpa", "step_s": 0.5, "tokens_per_s": 4096.0,
              "speed_vs_first": 1.0, "peak_mib": 300.0, "saved_mib": 120.0},
             {"positions": 512, "impl": "local", "step_s": 0.7, "tokens_per_s": 2925.7,
              "speed_vs_first": 0.714, "peak_mib": 520.0, "saved_mib": 260.0}]}

DATA = {
    "machine": {"cpus": 2, "physical_cpus": 2, "load_average": 1.0},
    "preprocess": {
        "documents": 2848, "text_mb": 64.2, "pieces": 32000, "tokenizer": "t.model", "repeats": 3,
        "rows": [
            {"workers": 1, "key": "raw", "what": "sentencepiece raw encode (in memory, threads)",
             "wall_s": 20.1, "mb_s": 3.19, "tokens_per_s": 1.2e6, "rate_vs_raw": 1.0, "cpu_s": 20.0,
             "cpu_vs_raw": 1.0, "peak_rss_mib": None},
            {"workers": 1, "key": "ours", "what": "megatron-patch preprocess_data.py (end to end)",
             "wall_s": 22.0, "mb_s": 2.91, "tokens_per_s": 1.1e6, "rate_vs_raw": 0.91, "cpu_s": 23.0,
             "cpu_vs_raw": 0.87, "peak_rss_mib": 210.4}],
        "memory": {"text_mb": 300.0, "jsonl_mb": 310.0, "workers": 2, "seconds": 90.0,
                   "peak_rss_mib": 410.0, "rss_percentiles_mib": [300.0, 390.0, 400.0, 405.0, 410.0]}},
    "index": {"tokens": 1_000_000_000, "documents": 10_000_000, "seq_length": 2048, "repeats": 3,
              "rows": [{"builder": "megatron-core helpers_cpp.build_sample_idx (K=1)", "seconds": 1.2,
                        "vs_megatron_core": 1.0},
                       {"builder": "megatron-patch build_sample_index (K=4, T=512)", "seconds": 0.6,
                        "vs_megatron_core": 2.0}]}}


def test_model_and_spec_rows():
    rows = bench_all.model_rows(MODEL)
    assert rows[0] == ("fwd+bwd tokens/s, K=1 (cpu-small, T=256 x mbs 4, float32 on cpu)", "1,024")
    assert rows[-1] == ("speed ratio K=4 / K=1 (ideal 4)", "3.64x")
    rows = bench_all.spec_rows(SPECS)
    assert rows[1] == ("spec local, T=512 (cpu-small, K=4, float32 on cpu)",
                       "2,926 tok/s, 0.71x, peak 520 MiB, saved 260 MiB")


def test_data_rows_and_markdown():
    rows = bench_all.data_rows(DATA)
    assert rows[1] == ("preprocess: megatron-patch preprocess_data.py (end to end), 1 workers",
                       "wall s 22.0; MB/s 2.91; tokens/s 1.10M; rate vs raw 91%; CPU s 23.0; "
                       "CPU vs raw 87%; peak RSS 210 MiB")
    assert rows[2][0] == "preprocess memory" and "peak RSS of all processes 410 MiB" in rows[2][1]
    assert rows[-1] == ("sample index: megatron-patch build_sample_index (K=4, T=512)",
                        "seconds 0.600; vs megatron-core 2.00x")
    md = format_markdown(DATA).splitlines()
    assert md[0] == "machine: 2 CPUs (2 physical), load average 1.0 at start"
    assert "| 1 | megatron-patch preprocess_data.py (end to end) | 22.0 | 2.91 | 1.10M | 91% | 23.0 | 87% | 210 MiB |" in md
    assert "| 1 | sentencepiece raw encode (in memory, threads) | 20.1 | 3.19 | 1.20M | 100% | 20.0 | 100% |  |" in md
    assert md[-1] == "| megatron-patch build_sample_index (K=4, T=512) | 0.600 | 2.00x |"
    assert any(line.startswith("Memory: megatron-patch on a 300 MB corpus (310 MB JSONL)") for line in md)


@pytest.mark.parametrize("rows, result", [
    (bench_all.model_rows, {"rows": [{"patch_size": 1}]}),
    (bench_all.spec_rows, {"rows": []}),
    (bench_all.data_rows, {"machine": {}, "preprocess": None, "index": None}),
])
def test_rows_reject_incomplete_results(rows, result):
    with pytest.raises(ValueError):
        rows(result)


def test_commands_and_summary(tmp_path):
    args = cli.get_args(["--quick", "--data-work-dir", str(tmp_path)])
    cmds = cli.commands(args)
    assert list(cmds) == ["model", "specs", "data"]
    assert "--preset" in cmds["model"]
    assert cmds["specs"][-2:] == ["--compare-specs", "64"]
    assert cli.display("model", cmds["model"]).startswith("python tools/bench_model.py --preset tiny")
    full = cli.commands(cli.get_args(["--only", "specs"]))
    assert cli.display("specs", full["specs"]) == "python tools/bench_model.py --compare-specs 512 2048"
    entries = [
        bench_all.run_bench("model", "python tools/bench_model.py", lambda: MODEL),
        {"name": "data", "command": "python tools/bench_data.py", "error": "exit status 1: boom", "rows": []},
    ]
    assert entries[0]["error"] is None and entries[0]["result"] is MODEL
    table = bench_all.summary_table(entries).splitlines()
    assert table[2].startswith("| model speed | fwd+bwd tokens/s, K=1") and "`python tools/bench_model.py`" in table[2]
    assert table[3].startswith("|  | fwd+bwd tokens/s, K=4")
    assert table[-1] == "| data pipeline | FAILED | exit status 1: boom | `python tools/bench_data.py` |"


def test_failed_and_timed_out_benchmarks_are_reported():
    def kaput():
        raise RuntimeError("kaput")

    entry = bench_all.run_bench("model", "x", kaput)
    assert "RuntimeError: kaput" in entry["error"] and entry["result"] is None
    entry = bench_all.run_bench("model", "x", lambda: {"rows": []})
    assert "fewer than two rows" in entry["error"]
    entry = bench_all.run_bench("model", "x", lambda: time.sleep(5), timeout=0.2)
    assert "timed out" in entry["error"] and entry["seconds"] < 4


def test_quick_model_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_all.py"), "--quick",
                           "--only", "model", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| model speed | fwd+bwd tokens/s, K=1 (tiny" in proc.stdout
    data = json.loads(out.read_text())
    (entry,) = data["benchmarks"]
    assert entry["error"] is None and entry["result"]["rows"][1]["patch_size"] == 4
    assert data["quick"] is True and "torch" in data["host"]
