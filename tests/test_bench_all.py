"""tools/bench_all.py: parsing of canned benchmark outputs, the summary table, failures, and a
real `--quick --only model` run (a few seconds)."""
import json
import os
import subprocess
import sys

import pytest

from tools import bench_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL_OUT = "megatron-patch: layer spec = sdpa (...)\n" + json.dumps({
    "preset": "cpu-small", "impl": "auto", "positions": 256, "micro_batch_size": 4,
    "dtype": "float32", "device": "cpu", "iters": 10, "params_m": 10.3,
    "rows": [{"patch_size": 1, "step_s": 1.0, "tokens_per_s": 1024.0, "ratio": 1.0},
             {"patch_size": 4, "step_s": 1.1, "tokens_per_s": 3723.6, "ratio": 3.636}]})

SPECS_OUT = json.dumps({
    "preset": "cpu-small", "patch_size": 4, "micro_batch_size": 1, "dtype": "float32",
    "device": "cpu", "threads": 2, "iters": 3,
    "rows": [{"positions": 512, "impl": "sdpa", "step_s": 0.5, "tokens_per_s": 4096.0,
              "speed_vs_first": 1.0, "peak_mib": 300.0, "saved_mib": 120.0},
             {"positions": 512, "impl": "local", "step_s": 0.7, "tokens_per_s": 2925.7,
              "speed_vs_first": 0.714, "peak_mib": 520.0, "saved_mib": 260.0}]})

DATA_OUT = """machine: 2 CPUs (2 physical), load average 1.0 at start

Preprocessing 64 MB of text (2,848 documents, Python stdlib source), 32000-piece BPE; best of 3; MB/s of document text

| workers | what | seconds | MB/s | tokens/s | vs raw |
|---|---|---|---|---|---|
| 1 | sentencepiece raw encode (in memory, threads) | 20.1 | 3.18 | 1.20M | 100% |
| 1 | megatron-patch preprocess_data.py (end to end) | 22.0 | 2.91 | 1.10M | 91% |

Memory: 300 MB corpus (310 MB JSONL), 2 workers, 90 s: peak RSS of all processes 410 MiB; RSS percentiles over the run (MiB): 300, 390, 400, 405, 410

Sample index: 1.00e9 tokens in 10e6 shuffled documents, 2048-token samples; best of 3

| builder | seconds | vs megatron-core |
|---|---|---|
| megatron-core helpers_cpp.build_sample_idx (K=1) | 1.200 | 1.00x |
| megatron-patch build_sample_index (K=4, T=512) | 0.600 | 2.00x |
"""


def test_parse_model():
    res, rows = bench_all.parse_model(MODEL_OUT)
    assert res["preset"] == "cpu-small"
    assert rows[0] == ("fwd+bwd tokens/s, K=1 (cpu-small, T=256 x mbs 4, float32 on cpu)", "1,024")
    assert rows[-1] == ("speed ratio K=4 / K=1 (ideal 4)", "3.64x")


def test_parse_specs():
    _, rows = bench_all.parse_specs(SPECS_OUT)
    assert rows[1][0] == "spec local, T=512 (cpu-small, K=4, float32 on cpu)"
    assert rows[1][1] == "2,926 tok/s, 0.71x, peak 520 MiB, saved 260 MiB"


def test_parse_data_markdown_and_json():
    res, rows = bench_all.parse_data(DATA_OUT)
    assert len(res["tables"]) == 2 and res["tables"][1]["header"] == ["builder", "seconds", "vs megatron-core"]
    assert rows[1] == ("preprocess: megatron-patch preprocess_data.py (end to end), 1 workers",
                       "seconds 22.0; MB/s 2.91; tokens/s 1.10M; vs raw 91%")
    assert rows[3] == ("sample index: megatron-patch build_sample_index (K=4, T=512)",
                       "seconds 0.600; vs megatron-core 2.00x")
    assert rows[-1][0] == "preprocess memory" and "peak RSS of all processes 410 MiB" in rows[-1][1]
    # If bench_data grows a JSON mode, its last line is taken as is.
    res, rows = bench_all.parse_data("log line\n" + json.dumps({"preprocess_mb_s": 2.9}))
    assert res == {"preprocess_mb_s": 2.9} and rows == [("preprocess_mb_s", "2.9")]


@pytest.mark.parametrize("parser, text", [
    (bench_all.parse_model, "no json here"),
    (bench_all.parse_model, json.dumps({"rows": [{"patch_size": 1}]})),
    (bench_all.parse_specs, json.dumps({"rows": []})),
    (bench_all.parse_data, "nothing useful"),
    (bench_all.parse_model, ""),
])
def test_parse_errors(parser, text):
    with pytest.raises(ValueError):
        parser(text)


def test_commands_and_summary(tmp_path):
    args = bench_all.get_args(["--quick", "--data-work-dir", str(tmp_path)])
    cmds = bench_all.commands(args)
    assert list(cmds) == ["model", "specs", "data"]
    assert cmds["model"][-1] == "--json" and "--preset" in cmds["model"]
    assert cmds["specs"][-3:] == ["--compare-specs", "64", "--json"]
    assert bench_all.display(cmds["model"]).startswith("python tools/bench_model.py --preset tiny")
    full = bench_all.commands(bench_all.get_args(["--only", "specs"]))
    assert bench_all.display(full["specs"]) == "python tools/bench_model.py --compare-specs 512 2048 --json"
    entries = [
        {"name": "model", "command": "python tools/bench_model.py --json", "error": None,
         "rows": [{"measurement": m, "value": v} for m, v in bench_all.parse_model(MODEL_OUT)[1]]},
        {"name": "data", "command": "python tools/bench_data.py", "error": "exit status 1: boom",
         "rows": []},
    ]
    table = bench_all.summary_table(entries).splitlines()
    assert table[2].startswith("| model speed | fwd+bwd tokens/s, K=1") and "`python tools/bench_model.py --json`" in table[2]
    assert table[3].startswith("|  | fwd+bwd tokens/s, K=4")
    assert table[-1] == "| data pipeline | FAILED | exit status 1: boom | `python tools/bench_data.py` |"


def test_failed_benchmark_is_reported():
    entry = bench_all.run_bench("model", [sys.executable, "-c", "import sys; sys.exit('kaput')"], 60)
    assert entry["returncode"] == 1 and "kaput" in entry["error"]
    entry = bench_all.run_bench("model", [sys.executable, "-c", "print('not json')"], 60)
    assert entry["returncode"] == 0 and "could not parse" in entry["error"]


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
