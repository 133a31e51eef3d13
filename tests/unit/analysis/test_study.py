"""The study driver (megatron_patch.analysis.study, tools/study.py): the grid, the results table and plots on synthetic run directories, the
driver's resume/failure logic with a stub trainer, and (when tools/pretrain.py exists) a tiny
real grid of two runs."""
import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

from megatron_patch.analysis import plots, results
from megatron_patch.analysis.study import (
    KNOB_FIELDS,
    RunSpec,
    build_grid,
    check_passthrough,
    launch_command,
    parse_fraction,
    parse_tokens,
)

from megatron_patch.training.metrics import MetricsError, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
STUDY = os.path.join(ROOT, "tools", "study.py")
PRETRAIN = os.path.join(ROOT, "tools", "pretrain.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- grid


def test_grid_names_order_and_budgets():
    specs = build_grid(4_000_000, [2, 4], [0.5, 2 / 3], ["same_tokens", "same_sequences"], [0.5, 1.0])
    names = [s.name for s in specs]
    assert names[:2] == ["token-1.0x", "token-0.5x"]
    assert "K4-lam0.6667-same_sequences" in names and len(names) == 2 + 2 * 2 * 2
    half = specs[1]
    assert (half.kind, half.patch_size, half.patch_fraction, half.train_tokens) == ("token", 1, 0.0, 2_000_000)
    k4 = next(s for s in specs if s.name == "K4-lam0.5-same_tokens")
    assert k4.pretrain_args() == ["--patch-size", "4", "--patch-fraction", "0.5", "--train-tokens",
                                  "4000000", "--patch-batch-policy", "same_tokens"]


def test_star_design_varies_one_axis_at_a_time():
    specs = build_grid(1_000_000, [4, 2, 8], [2 / 3, 1 / 4, 1 / 2, 4 / 5],
                       ["same_tokens", "same_sequences"], [1.0, 0.5], design="star")
    assert [s.name for s in specs] == [
        "token-1.0x", "token-0.5x",
        "K4-lam0.6667-same_tokens", "K4-lam0.6667-same_sequences",  # the centre under every policy
        "K2-lam0.6667-same_tokens", "K8-lam0.6667-same_tokens",      # K at the centre's lambda
        "K4-lam0.25-same_tokens", "K4-lam0.5-same_tokens", "K4-lam0.8-same_tokens",  # lambda at K=4
    ]
    with pytest.raises(ValueError, match="--design"):
        build_grid(1000, [4], [0.5], design="diagonal")


KNOB_AXES = {"patch_lr": [None, 3e-3], "handover_optimizer": ["reset", "carry"],
             "token_lr_warmup_iters": [None, 2], "patch_schedule": [None, "4:1/4,2:1/4"],
             "patch_target_decay": [1.0, 0.5], "patch_mean_dtype": ["fp32", "param"]}


def test_star_design_varies_each_knob_and_repeats_seeds():
    specs = build_grid(1000, [4], [0.5], ["same_tokens"], [1.0], "star", KNOB_AXES, [1234, 5678],
                       ["K4-lam0.5-same_tokens", "K4-lam0.5-same_tokens-handover_carry"])
    assert [s.name for s in specs] == [
        "token-1.0x", "K4-lam0.5-same_tokens", "K4-lam0.5-same_tokens-plr0.003",
        "K4-lam0.5-same_tokens-handover_carry", "K4-lam0.5-same_tokens-twarm2",
        "K4-lam0.5-same_tokens-sched_K4x0.25-K2x0.25", "K4-lam0.5-same_tokens-decay0.5",
        "K4-lam0.5-same_tokens-mean_param", "K4-lam0.5-same_tokens-seed5678",
        "K4-lam0.5-same_tokens-handover_carry-seed5678"]
    by = {s.name: s for s in specs}
    centre = by["K4-lam0.5-same_tokens"]
    assert centre.varies is None and centre.pretrain_args()[-8:] == [
        "--handover-optimizer", "reset", "--patch-target-decay", "1.0", "--patch-mean-dtype", "fp32",
        "--seed", "1234"]
    assert "--patch-lr" not in centre.pretrain_args()  # none: the trainer's value (--lr)
    carry = by["K4-lam0.5-same_tokens-handover_carry-seed5678"]
    assert (carry.handover_optimizer, carry.seed, carry.varies) == ("carry", 5678, "seed")
    sched = by["K4-lam0.5-same_tokens-sched_K4x0.25-K2x0.25"]
    assert (sched.patch_size, sched.patch_fraction, sched.varies) == (4, 0.5, "patch_schedule")
    assert sched.pretrain_args()[sched.pretrain_args().index("--patch-schedule") + 1] == "4:1/4,2:1/4"
    assert by["token-1.0x"].pretrain_args() == ["--patch-size", "1", "--patch-fraction", "0.0",
                                                "--train-tokens", "1000", "--seed", "1234"]
    # cross: every combination of the knob axes
    cross = build_grid(1000, [4], [0.5], ["same_tokens"], [], "cross",
                       {"patch_lr": [None, 3e-3], "patch_target_decay": [1.0, 0.5]})
    assert [s.name for s in cross] == ["K4-lam0.5-same_tokens", "K4-lam0.5-same_tokens-decay0.5",
                                       "K4-lam0.5-same_tokens-plr0.003", "K4-lam0.5-same_tokens-plr0.003-decay0.5"]
    with pytest.raises(ValueError, match="not runs of this grid"):
        build_grid(1000, [4], [0.5], seeds=[1, 2], seed_runs=["nope"])
    with pytest.raises(ValueError, match="repeats a value"):
        build_grid(1000, [4], [0.5], knobs={"patch_lr": [1e-3, 1e-3]})
    with pytest.raises(ValueError, match="--patch-lr"):
        check_passthrough(["--patch-lr", "1e-3"], ["patch_lr"])
    check_passthrough(["--patch-lr", "1e-3"])  # not an axis: the centre of every run
    with pytest.raises(ValueError, match="--patch-schedule"):
        check_passthrough(["--patch-schedule", "4:0.5"])


def test_knob_columns_show_what_the_grid_sets(tmp_path):
    specs = build_grid(1000, [4], [0.5], ["same_tokens"], [1.0], "star", {"patch_target_decay": [1.0, 0.5]})
    for s in specs:
        fake_run(str(tmp_path / s.name), s.patch_size, s.patch_fraction, s.train_tokens, 4.0)
    with open(tmp_path / specs[1].name / "compute.json") as f:
        compute = json.load(f)
    compute["recipe"] = {"handover_optimizer": "reset", "patch_lr": None, "patch_target_decay": 1.0}
    with open(tmp_path / specs[1].name / "compute.json", "w") as f:
        json.dump(compute, f)
    rows = results.collect(specs, str(tmp_path))
    assert rows[1]["handover_optimizer"] == "reset"  # from compute.json's recipe
    md = results.to_markdown(rows, {})
    assert "| target decay |" in md and "hand-over optim" not in md and "patch lr" not in md
    header = results.to_csv(rows).splitlines()[0].split(",")
    assert set(KNOB_FIELDS) <= set(header) and "seed" in header and "varies" in header
    assert plots.plot_knobs(rows, str(tmp_path / "k.png"))
    assert (tmp_path / "k.png").read_bytes()[:8] == PNG_MAGIC
    assert not plots.plot_knobs(results.collect(specs[:2], str(tmp_path)), str(tmp_path / "none.png"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(patch_sizes=[1]), "K=1 is token-level"),
    (dict(patch_fractions=[0.0]), r"\(0, 1\]"),
    (dict(policies=["bogus"]), "batch-policies"),
    (dict(controls=[0]), "controls"),
    (dict(patch_sizes=[4, 4]), "repeats"),
])
def test_grid_rejects_bad_knobs(kwargs, match):
    base = dict(patch_sizes=[4], patch_fractions=[0.5], policies=["same_tokens"], controls=[1.0])
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_grid(1000, **base)


def test_parsers_and_passthrough():
    assert parse_fraction("2/3") == pytest.approx(2 / 3) and parse_fraction("0.25") == 0.25
    assert parse_tokens("4M") == 4_000_000 and parse_tokens("4e6") == 4_000_000 and parse_tokens("123") == 123
    for bad in ("x", "1.5"):
        with pytest.raises(ValueError):
            parse_tokens(bad)
    with pytest.raises(ValueError):
        parse_fraction("1/0")
    check_passthrough(["--seq-length", "64", "--config", "x.yaml"])
    with pytest.raises(ValueError, match="--save"):
        check_passthrough(["--save=/x"])


def test_launch_command_saves_and_resumes_in_the_run_directory(tmp_path):
    spec = RunSpec("K4-lam0.5-same_tokens", "patch", 4, 0.5, "same_tokens", 1000)
    run = tmp_path / spec.name
    cmd = launch_command(spec, str(run), ["--model", "tiny"], 2, PRETRAIN)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node" in cmd
    # `--save D --load D`: a fresh start for a new directory, a resume for an interrupted run.
    i = cmd.index("--save")
    assert cmd[i:i + 4] == ["--save", str(run), "--load", str(run)]
    cmd = launch_command(spec, str(run), [], 1, PRETRAIN, launcher="python")
    assert cmd[0] == sys.executable and cmd[1] == os.path.normpath(PRETRAIN)
    with pytest.raises(ValueError, match="one process"):
        launch_command(spec, str(run), [], 2, PRETRAIN, launcher="python")


# ----------------------------------------------------------------------------- synthetic runs


def fake_run(run_dir, K, lam, tokens, final_loss, tokens_per_step=100.0, flops_per_token=10.0,
             evals=3):
    """Write the trainer's records for a run: token-only FLOPs = flops_per_token per token,
    a patch stage costs 1/K of that per token (the ideal)."""
    os.makedirs(run_dir, exist_ok=True)
    patch_tokens = int(lam * tokens)
    stages = []
    if patch_tokens:
        stages.append({"stage": "patch", "patch_size": K, "steps": int(patch_tokens / tokens_per_step),
                       "tokens": patch_tokens, "flops": patch_tokens * flops_per_token / K, "wall_s": 1.0})
    rest = tokens - patch_tokens
    stages.append({"stage": "token", "patch_size": 1, "steps": int(rest / tokens_per_step),
                   "tokens": rest, "flops": rest * flops_per_token, "wall_s": 2.0})
    total = sum(s["flops"] for s in stages)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for i in range(1, evals + 1):
            f.write(json.dumps({"kind": "train", "stage": "token", "patch_size": 1, "step": i,
                                "loss": 9.0, "tokens": 0, "flops": total * i / evals, "wall_s": i}) + "\n")
            f.write(json.dumps({"kind": "eval", "stage": "token", "patch_size": 1, "step": i,
                                "val_loss": final_loss + (evals - i) * 0.5, "val_ppl": 1.0,
                                "tokens": tokens * i // evals, "flops": total * i / evals,
                                "wall_s": i}) + "\n")
        f.write('{"kind": "train", "stage"')  # a line cut short by a crash
    compute = {"stages": stages, "total_flops": total, "token_only_flops": tokens * flops_per_token,
               "ratio": total / (tokens * flops_per_token), "ideal_ratio": lam / K + 1 - lam,
               "final_val_loss": final_loss, "final_val_ppl": 2.718 ** final_loss}
    with open(os.path.join(run_dir, "compute.json"), "w") as f:
        json.dump(compute, f)


@pytest.fixture
def study(tmp_path):
    runs = tmp_path / "runs"
    specs = build_grid(1000, [2, 4], [0.5], ["same_tokens"], [1.0, 0.5])
    losses = {"token-1.0x": 4.0, "token-0.5x": 4.5, "K2-lam0.5-same_tokens": 4.2}
    for s in specs:
        if s.name in losses:
            fake_run(str(runs / s.name), s.patch_size, s.patch_fraction, s.train_tokens, losses[s.name])
    (runs / "K4-lam0.5-same_tokens").mkdir()  # started, never finished
    return specs, str(runs)


def test_table_compute_and_comparisons(study):
    specs, runs = study
    rows = {r["name"]: r for r in results.collect(specs, runs)}
    assert rows["K4-lam0.5-same_tokens"]["status"] == "unfinished"
    full, half, k2 = rows["token-1.0x"], rows["token-0.5x"], rows["K2-lam0.5-same_tokens"]
    assert full["compute_x"] == pytest.approx(1.0) and half["compute_x"] == pytest.approx(0.5)
    # K=2, lambda=1/2: 0.5/2 + 0.5 = 0.75 of the full budget's compute
    assert k2["compute_x"] == pytest.approx(0.75) and k2["ideal_ratio"] == pytest.approx(0.75)
    assert (k2["patch_steps"], k2["token_steps"], k2["tokens"]) == (5, 5, 1000)
    assert k2["delta_vs_full"] == pytest.approx(0.2)
    assert half["delta_vs_full"] == pytest.approx(0.5)
    # equal compute: 0.75x is closer in ratio to 1.0x (|ln 0.75| = 0.29) than to 0.5x (|ln 1.5| = 0.41)
    assert k2["equal_compute_control"] == "token-1.0x"
    assert k2["delta_vs_equal_compute"] == pytest.approx(0.2)
    assert "delta_vs_full" not in full


def test_csv_markdown_and_plots(study, tmp_path):
    specs, runs = study
    rows = results.collect(specs, runs)
    csv_text = results.to_csv(rows)
    header = csv_text.splitlines()[0].split(",")
    assert header[0] == "name" and "total_flops" in header and "status" in header
    assert len(csv_text.splitlines()) == 1 + len(specs)
    md = results.to_markdown(rows, {"corpus": "x"}, [plots.FLOPS_PLOT])
    assert "| K2-lam0.5-same_tokens | patch | 2 | 0.5 | same_tokens |" in md
    assert "0.750" in md and "+0.2000" in md
    assert "K4-lam0.5-same_tokens (unfinished)" in md
    assert f"({plots.FLOPS_PLOT})" in md
    for fn, args in ((plots.plot_loss_vs_flops, (rows, runs)), (plots.plot_loss_vs_k_lambda, (rows,))):
        path = tmp_path / f"{fn.__name__}.png"
        assert fn(*args, str(path))
        assert path.read_bytes()[:8] == PNG_MAGIC
    curve = results.eval_curve(os.path.join(runs, "token-1.0x"))
    assert [p["val_loss"] for p in curve] == [5.0, 4.5, 4.0]


def test_nothing_finished_draws_nothing(tmp_path):
    specs = build_grid(1000, [4], [0.5], ["same_tokens"], [1.0])
    rows = results.collect(specs, str(tmp_path))
    assert {r["status"] for r in rows} == {"not run"}
    assert not plots.plot_loss_vs_flops(rows, str(tmp_path), str(tmp_path / "a.png"))
    assert not plots.plot_loss_vs_k_lambda(rows, str(tmp_path / "b.png"))
    assert "No run has finished yet." in results.to_markdown(rows, {})


def test_bad_records_are_clear_errors(tmp_path):
    (tmp_path / "compute.json").write_text("{not json")
    with pytest.raises(results.RunRecordError, match="unreadable"):
        results.read_compute(str(tmp_path))
    (tmp_path / "compute.json").write_text(json.dumps({"stages": []}))
    with pytest.raises(results.RunRecordError, match="lacks"):
        results.read_compute(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"kind": "eval"\n{"kind": "eval"}\n')
    with pytest.raises(MetricsError, match=":1: not valid JSON"):
        read_metrics(str(tmp_path))


# ----------------------------------------------------------------------------- driver (stub trainer)

STUB = textwrap.dedent('''
    """A stand-in for tools/pretrain.py: writes the metrics contract from its flags."""
    import argparse, json, os, sys
    ''') + inspect.getsource(fake_run) + textwrap.dedent('''
    ap = argparse.ArgumentParser()
    ap.add_argument("--save"); ap.add_argument("--load")
    ap.add_argument("--patch-size", type=int); ap.add_argument("--patch-fraction", type=float)
    ap.add_argument("--train-tokens", type=int); ap.add_argument("--patch-batch-policy")
    args, rest = ap.parse_known_args()
    name = os.path.basename(args.save)
    with open(os.path.join(os.path.dirname(args.save), "calls.txt"), "a") as f:
        f.write(json.dumps({"name": name, "load": args.load, "rest": rest}) + "\\n")
    if name == os.environ.get("STUB_FAIL"):
        os.makedirs(os.path.join(args.save, "patch"), exist_ok=True)
        with open(os.path.join(args.save, "patch", "latest_checkpointed_iteration.txt"), "w") as f:
            f.write("2")
        sys.exit(3)
    loss = 4.0 + 0.1 * args.patch_size - 0.2 * args.patch_fraction + 1e-6 * (1000 - args.train_tokens)
    fake_run(args.save, args.patch_size, args.patch_fraction, args.train_tokens, loss)
''')


def run_study(tmp_path, *extra, env=None):
    stub = tmp_path / "stub_pretrain.py"
    stub.write_text(STUB)
    cmd = [sys.executable, STUDY, "--out", str(tmp_path / "out"), "--train-tokens", "1000",
           "--patch-sizes", "2", "4", "--patch-fractions", "1/2", "--controls", "1.0",
           "--launcher", "python", "--pretrain", str(stub), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=ROOT, timeout=120)


def calls(tmp_path):
    path = tmp_path / "out" / "runs" / "calls.txt"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_driver_runs_skips_resumes_and_reports_failures(tmp_path):
    out = tmp_path / "out"
    proc = run_study(tmp_path, "--keep-going", "--", "--seq-length", "64",
                     env={"STUB_FAIL": "K2-lam0.5-same_tokens"})
    assert proc.returncode == 1, proc.stderr
    assert "failed: K2-lam0.5-same_tokens" in proc.stderr and "exit status 3" in proc.stderr
    first = calls(tmp_path)
    assert [c["name"] for c in first] == ["token-1.0x", "K2-lam0.5-same_tokens", "K4-lam0.5-same_tokens"]
    # Every launch is `--save D --load D` (a fresh start for a new D, a resume otherwise).
    runs = out / "runs"
    assert all(c["rest"] == ["--seq-length", "64"] and c["load"] == str(runs / c["name"]) for c in first)
    md = (out / "results.md").read_text()
    assert "K2-lam0.5-same_tokens (unfinished)" in md and "| K4-lam0.5-same_tokens |" in md
    assert (out / "val_loss_vs_flops.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "val_loss_vs_K_lambda.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "grid.json").read_text())["runs"][0]["name"] == "token-1.0x"

    # Rerun: the finished runs are skipped, the failed one resumes from its checkpoint.
    proc = run_study(tmp_path, "--", "--seq-length", "64")
    assert proc.returncode == 0, proc.stderr
    again = calls(tmp_path)[len(first):]
    assert [(c["name"], c["load"]) for c in again] == [
        ("K2-lam0.5-same_tokens", str(out / "runs" / "K2-lam0.5-same_tokens"))]
    assert proc.stdout.count("finished, skipped") == 2
    csv_lines = (out / "results.csv").read_text().splitlines()
    status = csv_lines[0].split(",").index("status")
    assert len(csv_lines) == 4 and all(line.split(",")[status] == "finished" for line in csv_lines[1:])


def test_driver_stops_at_first_failure_and_checks_inputs(tmp_path):
    proc = run_study(tmp_path, env={"STUB_FAIL": "token-1.0x"})
    assert proc.returncode == 1 and [c["name"] for c in calls(tmp_path)] == ["token-1.0x"]
    assert "FAILED (exit status 3)" in proc.stderr
    proc = run_study(tmp_path, "--data-path", str(tmp_path / "nope"))
    assert proc.returncode == 1 and "nope.bin and" in proc.stderr
    proc = run_study(tmp_path, "--", "--train-iters", "5")
    assert proc.returncode == 1 and "--train-iters" in proc.stderr


# ----------------------------------------------------------------------------- the real trainer


@pytest.mark.skipif(not os.path.isfile(PRETRAIN), reason="tools/pretrain.py not written yet")
def test_tiny_real_grid(tmp_path):
    """Two real runs (token-only control and K=4, lambda=1/2) of the tiny model on a tiny corpus."""
    import numpy as np
    import sentencepiece

    from tests._data_helpers import synthetic_documents, tiny_tokenizer, write_indexed

    tok = tiny_tokenizer()
    sp = sentencepiece.SentencePieceProcessor(model_file=tok)
    docs = [np.array(sp.encode(d) + [sp.eos_id()], dtype=np.uint16) for d in synthetic_documents(300, seed=7)]
    prefix = write_indexed(str(tmp_path / "corpus_text_document"), docs)
    out = tmp_path / "study"
    cmd = [sys.executable, STUDY, "--out", str(out), "--data-path", prefix, "--tokenizer-model", tok,
           "--model", "tiny", "--train-tokens", "768", "--patch-sizes", "4", "--patch-fractions", "1/2",
           "--controls", "1.0", "--", "--seq-length", "32", "--patch-seq-length", "32",
           "--global-batch-size", "4", "--micro-batch-size", "4", "--lr-warmup-iters", "1", "--eval-iters", "1",
           "--split", "90,10,0", "--no-tensorboard"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    logs = "".join((out / "logs" / n).read_text() for n in os.listdir(out / "logs")) if (out / "logs").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs[-4000:]
    rows = {r["name"]: r for r in results.collect(
        build_grid(768, [4], [0.5], ["same_tokens"], [1.0]), str(out / "runs"))}
    control, patch = rows["token-1.0x"], rows["K4-lam0.5-same_tokens"]
    assert control["status"] == patch["status"] == "finished"
    assert (control["token_steps"], control["patch_steps"]) == (6, 0)
    assert (patch["patch_steps"], patch["token_steps"]) == (3, 3)
    # K=4, lambda=1/2 (patch samples of 8 patches = 32 tokens): about 0.5/4 + 0.5 = 0.625 of the
    # control's FLOPs
    assert patch["compute_x"] == pytest.approx(0.625, rel=0.05)
    for r in (control, patch):
        assert np.isfinite(r["final_val_loss"]) and r["final_val_loss"] > 0
    assert (out / "val_loss_vs_flops.png").read_bytes()[:8] == PNG_MAGIC
    # the trainer's own checks run for every run before any launch (3 patch steps <= warmup 3)
    bad = [a if a != str(out) else str(tmp_path / "bad") for a in cmd]
    bad[bad.index("--lr-warmup-iters") + 1] = "3"
    proc = subprocess.run(bad, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and "run K4-lam0.5-same_tokens:" in proc.stderr
    assert "lr-warmup-iters" in proc.stderr and not (tmp_path / "bad" / "logs").exists()


@pytest.mark.skipif(not os.path.isfile(PRETRAIN), reason="tools/pretrain.py not written yet")
def test_tiny_real_knob_grid(tmp_path):
    """Every recipe knob once around a centre (K=4, lambda=1/2), the hand-over variants (re-init
    of the output projections, shrink and perturb, one LR schedule over the run) and the plain
    output-projection init, the centre with a second seed, and the centre's transfer control
    (its token stage alone): thirteen real one-process runs of the tiny model, a few steps each."""
    import numpy as np
    import sentencepiece

    from tests._data_helpers import synthetic_documents, tiny_tokenizer, write_indexed

    tok = tiny_tokenizer()
    sp = sentencepiece.SentencePieceProcessor(model_file=tok)
    docs = [np.array(sp.encode(d) + [sp.eos_id()], dtype=np.uint16) for d in synthetic_documents(300, seed=7)]
    prefix = write_indexed(str(tmp_path / "corpus_text_document"), docs)
    out = tmp_path / "study"
    axes = ["--patch-lr", "none", "3e-3", "--handover-optimizer", "reset", "carry",
            "--token-lr-warmup-iters", "none", "2", "--patch-schedule", "none", "4:1/4,2:1/4",
            "--patch-target-decay", "1", "0.5", "--patch-mean-dtype", "fp32", "param", "--seeds", "1234", "5678",
            "--handover-reinit", "none", "out_proj", "--handover-shrink-perturb", "none", "0.5:0.5",
            "--lr-schedule-scope", "stage", "run", "--output-proj-init", "scaled", "plain",
            "--transfer-controls", "K4-lam0.5-same_tokens"]
    cmd = [sys.executable, STUDY, "--out", str(out), "--data-path", prefix, "--tokenizer-model", tok,
           "--model", "tiny", "--train-tokens", "1024", "--patch-sizes", "4", "--patch-fractions", "1/2",
           "--controls", "--design", "star", "--launcher", "python", *axes,
           "--", "--num-layers", "2", "--seq-length", "32", "--patch-seq-length", "32", "--global-batch-size", "4",
           "--micro-batch-size", "4", "--lr-warmup-iters", "1", "--eval-iters", "1", "--split", "90,10,0",
           "--no-tensorboard", "--bf16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    logs = "".join((out / "logs" / n).read_text() for n in os.listdir(out / "logs")) if (out / "logs").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs[-4000:]
    grid = json.loads((out / "grid.json").read_text())["runs"]
    rows = {r["name"]: r for r in results.collect([RunSpec(**r) for r in grid], str(out / "runs"))}
    centre = rows["K4-lam0.5-same_tokens"]
    assert len(rows) == 13 and {r["status"] for r in rows.values()} == {"finished"}
    assert (centre["patch_steps"], centre["token_steps"]) == (4, 4)
    sched = rows["K4-lam0.5-same_tokens-sched_K4x0.25-K2x0.25"]
    assert (sched["patch_steps"], sched["token_steps"], sched["patch_schedule"]) == (4, 4, "4:1/4,2:1/4")
    assert sched["ideal_ratio"] == pytest.approx(0.25 / 4 + 0.25 / 2 + 0.5)
    with open(out / "runs" / sched["name"] / "compute.json") as f:
        assert [s["stage"] for s in json.load(f)["stages"]] == ["patch_k4", "patch_k2", "token"]
    # each knob reached the trainer: its compute.json records it, and the run trained differently
    for name, field, value in (("plr0.003", "patch_lr", 3e-3), ("handover_carry", "handover_optimizer", "carry"),
                               ("twarm2", "token_lr_warmup_iters", 2), ("decay0.5", "patch_target_decay", 0.5),
                               ("mean_param", "patch_mean_dtype", "param"), ("reinit_out_proj", "handover_reinit", "out_proj"),
                               ("shrink0.5-perturb0.5", "handover_shrink", 0.5),
                               ("shrink0.5-perturb0.5", "handover_perturb", 0.5),
                               ("lrscope_run", "lr_schedule_scope", "run"), ("oproj_plain", "output_proj_init", "plain")):
        run = f"K4-lam0.5-same_tokens-{name}"
        with open(out / "runs" / run / "compute.json") as f:
            assert json.load(f)["recipe"][field] == value, run
        assert rows[run][field] == value
        assert rows[run]["final_val_loss"] != centre["final_val_loss"], run
    # the transfer control: the centre's token stage alone (same steps and data), from a fresh init
    alone = rows["K4-lam0.5-same_tokens-alone"]
    assert (alone["kind"], alone["patch_steps"], alone["token_steps"]) == ("alone", 0, centre["token_steps"])
    assert alone["tokens"] == centre["tokens"] // 2
    with open(out / "runs" / alone["name"] / "compute.json") as f:
        assert json.load(f)["recipe"]["handover_reinit"] == "all"
    assert centre["transfer_control"] == alone["name"]
    assert centre["transfer_nats"] == pytest.approx(alone["final_val_loss"] - centre["final_val_loss"])
    assert alone["final_val_loss"] != centre["final_val_loss"]
    assert rows["K4-lam0.5-same_tokens-reinit_out_proj"].get("transfer_nats") is not None  # shares the control
    seed = rows["K4-lam0.5-same_tokens-seed5678"]
    assert seed["seed"] == 5678 and seed["final_val_loss"] != centre["final_val_loss"]
    md = (out / "results.md").read_text()
    for header in ("K schedule", "patch lr", "token warmup", "hand-over optim", "target decay", "patch mean", "seed",
                   "re-init", "shrink", "perturb", "LR schedule", "out-proj init", "transfer nats"):
        assert f"| {header} |" in md, header
    assert "val_loss_by_knob.png" in md and (out / "val_loss_by_knob.png").read_bytes()[:8] == PNG_MAGIC
