"""The demo's report (megatron_patch.analysis.demo, python -m megatron_patch.cli.demo_report) on
synthetic metrics files: table, summary.json, plot, bad input.

    pytest -q tests/unit/analysis/test_demo_report.py
"""
import json
import math
from pathlib import Path

import pytest

from megatron_patch.analysis import demo
from megatron_patch.cli import demo_report

FLOPS_PER_TOKEN = 1e8


def _write_run(d: Path, stages, per_stage_counters=False, compute=True, torn=False):
    """stages: [(name, K, steps, tokens_per_step, sec_per_step, [val losses at each eval])]."""
    d.mkdir(parents=True)
    lines, tokens, flops, wall = [], 0, 0.0, 0.0
    for name, K, steps, tps, sps, losses in stages:
        if per_stage_counters:
            tokens, flops, wall = 0, 0.0, 0.0
        every = steps // len(losses)
        for step in range(1, steps + 1):
            tokens += tps
            flops += tps * FLOPS_PER_TOKEN / K
            wall += sps
            lines.append({"kind": "train", "stage": name, "patch_size": K, "step": step, "loss": 5.0,
                          "tokens": tokens, "flops": flops, "wall_s": wall})
            if step % every == 0:
                loss = losses[step // every - 1]
                lines.append({"kind": "eval", "stage": name, "patch_size": K, "step": step, "val_loss": loss,
                              "val_ppl": math.exp(loss), "tokens": tokens, "flops": flops, "wall_s": wall})
    text = "\n".join(json.dumps(r) for r in lines) + "\n"
    if torn:
        text += '{"kind": "train", "sta'
    (d / "metrics.jsonl").write_text(text)
    if compute:
        total = sum(tps * steps * FLOPS_PER_TOKEN / K for _, K, steps, tps, _, _ in stages)
        final = stages[-1][-1][-1]
        (d / "compute.json").write_text(json.dumps({
            "stages": [s[0] for s in stages], "total_flops": total, "token_only_flops": 2 * total,
            "ratio": 0.5, "ideal_ratio": 0.5, "final_val_loss": final, "final_val_ppl": math.exp(final)}))


@pytest.fixture
def runs(tmp_path):
    _write_run(tmp_path / "base", [("token", 1, 30, 1000, 1.0, [6.0, 5.0, 4.5])])
    _write_run(tmp_path / "patch", [("patch", 4, 20, 1000, 0.25, [7.0, 6.0]),
                                     ("token", 1, 10, 1000, 1.0, [5.0])])
    return tmp_path


def test_summary_table_and_plot(runs, capsys):
    pytest.importorskip("matplotlib")
    out = runs / "report"
    rc = demo_report.main(["--run", f"token-only={runs / 'base'}", "--run", f"patch-K4={runs / 'patch'}",
                           "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "token-only" in printed and "patch-K4" in printed and "0.50x" in printed
    s = json.loads((out / "summary.json").read_text())
    base, patch = s["runs"]
    assert s["reference"] == "token-only"
    assert base["total_flops"] == pytest.approx(30 * 1000 * FLOPS_PER_TOKEN)
    assert patch["relative_compute"] == pytest.approx(0.5)
    assert patch["wall_s"] == pytest.approx(20 * 0.25 + 10)
    assert patch["tokens"] == 30 * 1000
    assert patch["val_loss"] == 5.0 and patch["val_ppl"] == pytest.approx(math.exp(5.0))
    assert [p["stage"] for p in patch["eval_curve"]] == ["patch", "patch", "token"]
    png = (out / "val_loss_vs_compute.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_per_stage_counters_are_made_cumulative(tmp_path):
    _write_run(tmp_path / "r", [("patch", 4, 8, 100, 0.5, [7.0, 6.0]), ("token", 1, 4, 100, 1.0, [5.0, 4.0])],
               per_stage_counters=True, compute=False, torn=True)
    row = demo.summarize_run("r", tmp_path / "r")
    flops = [p["flops"] for p in row["curve"]]
    assert flops == sorted(flops)
    assert row["total_flops"] == pytest.approx(8 * 100 * FLOPS_PER_TOKEN / 4 + 4 * 100 * FLOPS_PER_TOKEN)
    assert row["wall_s"] == pytest.approx(8 * 0.5 + 4)
    assert row["val_loss"] == 4.0  # no compute.json: the last eval record
    assert row["val_ppl"] == pytest.approx(math.exp(4.0))


def test_held_out_eval_replaces_run_validation(runs, capsys):
    ev = runs / "eval.json"
    ev.write_text(json.dumps({"loss": 4.2, "ppl": 66.7, "tokens": 12345}))
    rc = demo_report.main(["--run", f"a={runs / 'base'}", "--eval", f"a={ev}", "--out", str(runs / "o"),
                           "--no-plot"])
    assert rc == 0
    row = json.loads((runs / "o" / "summary.json").read_text())["runs"][0]
    assert (row["val_loss"], row["val_ppl"], row["val_source"]) == (4.2, 66.7, "held-out")
    assert row["run_val_loss"] == 4.5  # the run's own final validation is kept beside it
    assert "held-out loss" in capsys.readouterr().out
    assert not (runs / "o" / "val_loss_vs_compute.png").exists()


@pytest.mark.parametrize("argv,msg", [
    (["--run", "x"], "NAME=PATH"),
    (["--run", "a={tmp}/missing"], "metrics.jsonl not found"),
    (["--run", "a={tmp}/base", "--eval", "b={tmp}/e.json"], "unknown run"),
    (["--run", "a={tmp}/base", "--run", "a={tmp}/base"], "twice"),
])
def test_bad_input(runs, capsys, argv, msg):
    argv = [a.format(tmp=runs) for a in argv]
    assert demo_report.main(argv + ["--out", str(runs / "bad")]) == 1
    assert msg in capsys.readouterr().err
    assert not (runs / "bad").exists()


def test_transfer_of_the_patch_run(runs, capsys):
    """The demo's fourth run: the token stage alone; the report prints loss(alone) - loss(patch)."""
    _write_run(runs / "alone", [("token", 1, 10, 1000, 1.0, [5.5, 5.3])])
    (runs / "alone.json").write_text(json.dumps({"loss": 5.25, "ppl": math.exp(5.25)}))
    (runs / "patch.json").write_text(json.dumps({"loss": 5.1, "ppl": math.exp(5.1)}))
    argv = ["--run", f"token-only={runs / 'base'}", "--run", f"patch-K4={runs / 'patch'}",
            "--run", f"token-stage-alone={runs / 'alone'}", "--out", str(runs / "o"), "--no-plot",
            "--transfer", "token-stage-alone=patch-K4"]
    assert demo_report.main(argv) == 0
    printed = capsys.readouterr().out
    assert "transfer of patch-K4: token-stage-alone 5.300 - patch-K4 5.000 = +0.300 nats (run loss" in printed
    s = json.loads((runs / "o" / "summary.json").read_text())
    assert [r["name"] for r in s["runs"]] == ["token-only", "patch-K4", "token-stage-alone"]
    assert s["transfer"][0]["transfer_nats"] == pytest.approx(0.3)
    # both held out: the held-out losses
    argv += ["--eval", f"token-stage-alone={runs / 'alone.json'}", "--eval", f"patch-K4={runs / 'patch.json'}"]
    assert demo_report.main(argv) == 0
    assert "= +0.150 nats (held-out loss" in capsys.readouterr().out
    assert demo_report.main(argv[:-6] + ["--transfer", "nope=patch-K4"]) == 1
    assert "unknown run" in capsys.readouterr().err
