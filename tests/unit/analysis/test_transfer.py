"""Transfer controls, the hand-over knobs as study axes, transfer_nats, the regime map, the
plotting precheck and the import structure of megatron_patch.analysis (no real training here:
test_study.py's tiny real knob grid runs the variants and the control end to end).

    pytest -q tests/unit/analysis/test_transfer.py
"""
import ast
import json
import math
import os
import sys

import pytest

from megatron_patch.analysis import grid, regime, results
from megatron_patch.analysis.study import build_grid, check_passthrough, launch_command
from tests.unit.analysis.test_study import PNG_MAGIC, PRETRAIN, fake_run

AXES = {"handover_reinit": [None, "out_proj", "embedding,output_layer"],
        "handover_shrink_perturb": [None, (0.5, 0.5)], "lr_schedule_scope": [None, "run"],
        "output_proj_init": [None, "plain"]}
CENTRE = "K4-lam0.5-same_tokens"


def _grid(**kwargs):
    base = dict(train_tokens=1000, patch_sizes=[4], patch_fractions=[0.5], policies=["same_tokens"],
                controls=[1.0, 0.5], design="star", knobs=AXES, seeds=[1234, 5678], transfer_controls=[])
    base.update(kwargs)
    return build_grid(**base)


# ----------------------------------------------------------------------------- the grid


def test_transfer_controls_follow_their_patch_runs():
    specs = _grid()
    assert [(s.name, s.kind) for s in specs] == [
        ("token-1.0x", "token"), ("token-0.5x", "token"),
        (CENTRE, "patch"), (f"{CENTRE}-alone", "alone"),
        # hand-over variants: their token stage alone is the centre's, one control for all
        (f"{CENTRE}-reinit_out_proj", "patch"), (f"{CENTRE}-reinit_embedding+output_layer", "patch"),
        (f"{CENTRE}-shrink0.5-perturb0.5", "patch"),
        # the LR schedule and the init change the token stage: their own controls
        (f"{CENTRE}-lrscope_run", "patch"), (f"{CENTRE}-lrscope_run-alone", "alone"),
        (f"{CENTRE}-oproj_plain", "patch"), (f"{CENTRE}-oproj_plain-alone", "alone"),
        (f"{CENTRE}-seed5678", "patch"), (f"{CENTRE}-seed5678-alone", "alone"),
    ]
    by = {s.name: s for s in specs}
    sp = by[f"{CENTRE}-shrink0.5-perturb0.5"]
    assert (sp.handover_shrink, sp.handover_perturb, sp.varies) == (0.5, 0.5, "handover_shrink_perturb")
    controls = grid.transfer_controls_of(specs)
    assert controls[f"{CENTRE}-reinit_out_proj"] == controls[CENTRE] == f"{CENTRE}-alone"
    assert controls[f"{CENTRE}-lrscope_run"] == f"{CENTRE}-lrscope_run-alone"
    assert controls[f"{CENTRE}-seed5678"] == f"{CENTRE}-seed5678-alone"
    alone = by[f"{CENTRE}-seed5678-alone"]
    assert (alone.transfer_of, alone.seed, alone.handover_reinit) == (f"{CENTRE}-seed5678", 5678, "all")
    # only the runs named
    named = _grid(transfer_controls=[f"{CENTRE}-oproj_plain"], seeds=[])
    assert [s.name for s in named if s.kind == "alone"] == [f"{CENTRE}-oproj_plain-alone"]
    assert [s.name for s in _grid(transfer_controls=None) if s.kind == "alone"] == []
    with pytest.raises(ValueError, match="not patch runs"):
        _grid(transfer_controls=["token-1.0x"])


def test_every_run_parses_with_the_trainer_parser(tmp_path):
    """Each launch's flags through tools/pretrain.py's own parser: the transfer control trains
    the token stage of its patch run (same K, lambda, budget, batch, schedule, init, seed) from a
    fresh init (--stage token --handover-reinit all, nothing else handed over)."""
    from megatron_patch.training.config import parse_config

    specs = _grid(knobs={**AXES, "handover_optimizer": ["reset", "carry"]}, seeds=[1234])
    common = ["--model", "tiny", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000",
              "--seq-length", "32", "--global-batch-size", "4"]
    cfgs = {}
    for s in specs:
        cmd = launch_command(s, str(tmp_path / s.name), common, 1, PRETRAIN, launcher="python")
        assert cmd[:2] == [sys.executable, os.path.normpath(PRETRAIN)]
        cfgs[s.name] = parse_config(cmd[2:])
    centre, alone = cfgs[CENTRE], cfgs[f"{CENTRE}-alone"]
    assert (centre.train.stage, centre.optim.handover_reinit, centre.optim.handover_shrink,
            centre.optim.handover_perturb, centre.optim.lr_schedule_scope, centre.model.output_proj_init) == (
        "all", None, 1.0, 0.0, "stage", "scaled")
    assert centre.optim.handover_optimizer == "reset"
    assert (alone.train.stage, alone.optim.handover_reinit, alone.optim.handover_optimizer) == ("token", "all", "reset")
    for field in ("patch_size", "patch_fraction", "train_tokens", "patch_batch_policy", "seed",
                  "global_batch_size", "seq_length"):
        assert getattr(alone.train, field) == getattr(centre.train, field), field
    assert cfgs[f"{CENTRE}-alone"].checkpoint.save == str(tmp_path / f"{CENTRE}-alone")
    reinit = cfgs[f"{CENTRE}-reinit_embedding+output_layer"].optim
    assert reinit.reinit_groups() == ("embedding", "output_layer")
    sp = cfgs[f"{CENTRE}-shrink0.5-perturb0.5"].optim
    assert (sp.handover_shrink, sp.handover_perturb) == (0.5, 0.5)
    assert cfgs[f"{CENTRE}-lrscope_run"].optim.lr_schedule_scope == "run"
    assert cfgs[f"{CENTRE}-lrscope_run-alone"].optim.lr_schedule_scope == "run"
    assert cfgs[f"{CENTRE}-oproj_plain"].model.output_proj_init == "plain"
    assert cfgs[f"{CENTRE}-oproj_plain-alone"].model.output_proj_init == "plain"
    # the carried optimizer: a control has nothing to carry
    assert cfgs[f"{CENTRE}-handover_carry"].optim.handover_optimizer == "carry"
    assert grid.transfer_controls_of(specs)[f"{CENTRE}-handover_carry"] == f"{CENTRE}-alone"
    assert all(c.train.stage == ("token" if n.endswith("-alone") else "all") for n, c in cfgs.items())


def test_paired_axis_and_passthrough():
    assert grid.parse_shrink_perturb("0.5:0.25") == (0.5, 0.25) and grid.parse_shrink_perturb("none") is None
    with pytest.raises(ValueError, match="ALPHA:SIGMA"):
        grid.parse_shrink_perturb("0.5")
    cross = build_grid(1000, [4], [0.5], ["same_tokens"], [], "cross",
                       {"handover_shrink_perturb": [(1.0, 0.0), (0.8, 0.2)], "output_proj_init": ["scaled", "plain"]})
    assert [s.name for s in cross] == [CENTRE, f"{CENTRE}-oproj_plain", f"{CENTRE}-shrink0.8-perturb0.2",
                                       f"{CENTRE}-shrink0.8-perturb0.2-oproj_plain"]
    assert cross[0].pretrain_args()[-6:] == ["--handover-shrink", "1.0", "--handover-perturb", "0.0",
                                             "--output-proj-init", "scaled"]
    with pytest.raises(ValueError, match="do not vary"):
        build_grid(1000, [4], [0.5], knobs={"handover_shrink_perturb": [None, (0.5, 0.5)], "handover_shrink": [1.0]})
    with pytest.raises(ValueError, match="--handover-shrink"):
        check_passthrough(["--handover-shrink", "0.5"], ["handover_shrink_perturb"])
    check_passthrough(["--handover-reinit", "embedding"])  # not an axis, no controls: every run's
    with pytest.raises(ValueError, match="--handover-reinit"):
        check_passthrough(["--handover-reinit", "embedding"], transfer_controls=True)


# ----------------------------------------------------------------------------- transfer_nats


def _config_yaml(run_dir, model):
    """The resolved config beside the run's token-stage checkpoint (what regime counts)."""
    ckpt = os.path.join(run_dir, "token")
    os.makedirs(os.path.join(ckpt, "iter_0000004"), exist_ok=True)
    with open(os.path.join(ckpt, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("4")
    with open(os.path.join(ckpt, "iter_0000004", "config.yaml"), "w") as f:
        json.dump({"model": model, "parallel": {"tensor_model_parallel_size": 1}}, f)  # JSON is YAML


def _fake_study(out, tokens, losses, model=None, seeds=(), epochs=None):
    """A finished study directory: grid.json and fake runs with the given final losses
    {"token-1.0x", "token-0.5x", CENTRE, CENTRE-alone, ...}."""
    specs = build_grid(tokens, [4], [2 / 3], ["same_tokens"], [1.0, 0.5], "star", None,
                       list(seeds), None, [])
    runs = os.path.join(out, "runs")
    for s in specs:
        if s.name in losses:
            run = os.path.join(runs, s.name)
            fake_run(run, s.patch_size, s.patch_fraction if s.kind == "patch" else 0.0,
                     s.train_tokens if s.kind != "alone" else round(s.train_tokens / 3), losses[s.name])
            _config_yaml(run, model or {"preset": "tiny"})
            if epochs is not None:  # the trainer's "data" record first (fake_run ends on a torn line)
                path = os.path.join(run, "metrics.jsonl")
                with open(path) as f:
                    text = f.read()
                with open(path, "w") as f:
                    f.write(json.dumps({"kind": "data", "stage": "token", "step": 0, "epochs": epochs}) + "\n" + text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "grid.json"), "w") as f:
        json.dump({"runs_dir": os.path.abspath(runs), "runs": [s.to_dict() for s in specs]}, f)
    return specs


def test_transfer_nats_from_finished_runs(tmp_path):
    C = "K4-lam0.6667-same_tokens"
    specs = _fake_study(str(tmp_path), 1200, {"token-1.0x": 4.0, "token-0.5x": 4.5, C: 4.6, f"{C}-alone": 4.4})
    rows = {r["name"]: r for r in results.collect(specs, str(tmp_path / "runs"))}
    patch, alone = rows[C], rows[f"{C}-alone"]
    assert patch["transfer_control"] == f"{C}-alone"
    assert patch["transfer_nats"] == pytest.approx(4.4 - 4.6)  # the patch stage hurt: -0.2 nats
    assert patch["equal_compute_control"] == "token-0.5x"  # the control is never the equal-compute one
    assert patch["delta_vs_equal_compute"] == pytest.approx(0.1)
    assert alone["kind"] == "alone" and "transfer_nats" not in alone and alone["transfer_of"] == C
    assert alone["ideal_ratio"] == pytest.approx(1 / 3) and alone["compute_x"] == pytest.approx(1 / 3, abs=1e-3)
    csv_text = results.to_csv(list(rows.values()))
    header = csv_text.splitlines()[0].split(",")
    # the columns outside tools read keep their places; the new ones come last
    assert header[:5] == ["name", "kind", "patch_size", "patch_fraction", "batch_policy"]
    assert header[-8:] == results.NEW_CSV_FIELDS
    line = next(r for r in csv_text.splitlines() if r.startswith(C + ","))
    assert float(line.split(",")[header.index("transfer_nats")]) == pytest.approx(-0.2)
    md = results.to_markdown(list(rows.values()), {})
    assert "| transfer nats |" in md and "-0.2000" in md and "token stage alone" in md
    # not finished yet: no number, and no transfer columns without controls
    (tmp_path / "runs" / f"{C}-alone" / "compute.json").unlink()
    assert "transfer_nats" not in {r["name"]: r for r in results.collect(specs, str(tmp_path / "runs"))}[C]
    plain = build_grid(1200, [4], [2 / 3], ["same_tokens"], [1.0, 0.5])
    assert "transfer nats" not in results.to_markdown(results.collect(plain, str(tmp_path / "runs")), {})


def test_plots_draw_the_transfer_control(tmp_path):
    from megatron_patch.analysis import plots

    C = "K4-lam0.6667-same_tokens"
    specs = _fake_study(str(tmp_path), 1200, {"token-1.0x": 4.0, "token-0.5x": 4.5, C: 4.6, f"{C}-alone": 4.4})
    rows = results.collect(specs, str(tmp_path / "runs"))
    assert plots.plot_loss_vs_flops(rows, str(tmp_path / "runs"), str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG_MAGIC


# ----------------------------------------------------------------------------- regime map

TINY_NON_EMBEDDING = 4 * (64 * (64 + 2 * 64) + 64 * 64 + 3 * 64 * 176 + 2 * 64) + 64  # 201,280
TINY_TOTAL = TINY_NON_EMBEDDING + 2 * 1024 * 64  # untied input and output embeddings, vocab padded to 1024


def _regime_dirs(tmp_path):
    C = "K4-lam0.6667-same_tokens"
    dirs = []
    # tiny: three budgets, transfer -0.3, -0.2, -0.1 at 1, 2, 4 tokens per non-embedding parameter
    for i, mult in enumerate((1, 2, 4)):
        d = str(tmp_path / f"tiny-{mult}")
        tokens = TINY_NON_EMBEDDING * mult
        _fake_study(d, tokens, {"token-1.0x": 4.0, "token-0.5x": 4.5, C: 4.8 - 0.1 * i,
                                f"{C}-alone": 4.5, f"{C}-seed5678": 4.8 - 0.1 * i, f"{C}-seed5678-alone": 4.5},
                    seeds=[1234, 5678], epochs=0.5 * mult)
        dirs.append(d)
    # a larger model, one budget
    d = str(tmp_path / "wide")
    _fake_study(d, 10_000_000, {"token-1.0x": 3.0, "token-0.5x": 3.5, C: 3.4, f"{C}-alone": 3.45},
                model={"preset": "tiny", "hidden_size": 128, "ffn_hidden_size": 352})
    dirs.append("wide128=" + d)
    return dirs


def test_regime_points_and_fit(tmp_path):
    dirs = _regime_dirs(tmp_path)
    points = regime.regime_rows(dirs)
    assert [(p["size"], p["seeds"]) for p in points] == [("tiny", 2), ("tiny", 2), ("tiny", 2), ("wide128", 1)]
    tiny = points[0]
    assert (tiny["params_non_embedding"], tiny["params_total"]) == (TINY_NON_EMBEDDING, TINY_TOTAL)
    assert tiny["params_used"] == TINY_NON_EMBEDDING and tiny["param_count"] == "non_embedding"
    assert [p["tokens_per_param"] for p in points[:3]] == pytest.approx([1.0, 2.0, 4.0])
    assert [p["transfer_nats"] for p in points[:3]] == pytest.approx([-0.3, -0.2, -0.1])
    assert tiny["transfer_nats_std"] == pytest.approx(0.0) and tiny["epochs"] == 0.5
    assert tiny["gap_nats"] == pytest.approx(0.3) and tiny["equal_compute_control"] == "token-0.5x"
    assert points[3]["transfer_nats"] == pytest.approx(0.05) and points[3]["transfer_nats_std"] is None
    total = regime.regime_rows(dirs[:1], params="total")[0]
    assert total["tokens_per_param"] == pytest.approx(TINY_NON_EMBEDDING / TINY_TOTAL)

    # transfer = -0.3 + (0.1 / log10 2) log10(tpp): zero at tpp = 2**3 = 8, exactly (no residual)
    fits = regime.fit_all(points)
    assert set(fits) == {("tiny", "transfer_nats"), ("tiny", "gap_nats")}
    f = fits[("tiny", "transfer_nats")]
    assert f["slope"] == pytest.approx(0.1 / math.log10(2)) and f["intercept"] == pytest.approx(-0.3)
    assert f["crossing_tpp"] == pytest.approx(8.0) and f["crossing_log10_se"] == pytest.approx(0.0, abs=1e-6)
    # noisy points: the standard errors of a textbook example and the delta-method crossing
    g = regime.fit_line([10, 100, 1000, 10000], [-0.2, -0.05, 0.05, 0.2])
    assert g["slope"] == pytest.approx(0.13) and g["intercept"] == pytest.approx(-0.325)
    s2 = 0.0005 / 2  # residuals -0.005, 0.015, -0.015, 0.005 over n - 2 = 2 degrees of freedom
    assert g["slope_se"] == pytest.approx(math.sqrt(s2 / 5), rel=1e-6)
    assert g["intercept_se"] == pytest.approx(math.sqrt(s2 * (1 / 4 + 2.5 ** 2 / 5)), rel=1e-6)
    x0 = 0.325 / 0.13
    var = (g["intercept_se"] ** 2 + x0 ** 2 * g["slope_se"] ** 2 - 2 * x0 * 2.5 * s2 / 5) / 0.13 ** 2
    assert g["crossing_log10_tpp"] == pytest.approx(x0) and g["crossing_log10_se"] == pytest.approx(math.sqrt(var))
    assert g["crossing_tpp_low"] < g["crossing_tpp"] < g["crossing_tpp_high"]
    assert regime.fit_line([1, 2], [0.1, 0.2]) is None  # fewer than 3 points: no fit
    text = regime.fit_lines(points, fits)
    assert any(t.startswith("tiny, transfer: ") and "zero at 8 tokens/param" in t for t in text)
    assert any(t.startswith("wide128: 1 point(s), no fit") for t in text)


def test_regime_report_and_cli(tmp_path, capsys):
    from megatron_patch.cli import study as study_cli

    dirs = _regime_dirs(tmp_path)
    out = tmp_path / "map"
    assert study_cli.main(["--regime-map", str(out), *dirs, "--fit"]) == 0
    printed = capsys.readouterr().out
    assert "| tiny | 201,280 |" in printed and "zero at 8 tokens/param" in printed
    md = (out / "regime.md").read_text()
    assert "non-embedding parameters" in md and "![regime map](regime.png)" in md
    assert (out / "regime.png").read_bytes()[:8] == PNG_MAGIC
    lines = (out / "regime.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 5 and header[:3] == ["size", "study", "patch_run"]
    assert {"transfer_nats", "gap_nats", "tokens_per_param", "params_non_embedding", "params_total"} <= set(header)
    # without --fit: no fit lines; a study without transfer controls is a clear error
    assert study_cli.main(["--regime-map", str(tmp_path / "nofit"), *dirs]) == 0
    assert "Fits" not in (tmp_path / "nofit" / "regime.md").read_text()
    bare = tmp_path / "bare"
    _fake_study(str(bare), 1000, {"token-1.0x": 4.0, "K4-lam0.6667-same_tokens": 4.5})
    with open(bare / "grid.json") as f:
        g = json.load(f)
    g["runs"] = [r for r in g["runs"] if r["kind"] != "alone"]
    with open(bare / "grid.json", "w") as f:
        json.dump(g, f)
    with pytest.raises(SystemExit, match="no transfer control"):
        study_cli.main(["--regime-map", str(tmp_path / "x"), str(bare)])
    with pytest.raises(SystemExit, match="grid.json not found"):
        study_cli.main(["--regime-map", str(tmp_path / "x"), str(tmp_path / "nowhere")])


# ----------------------------------------------------------------------------- matplotlib, imports


def test_study_stops_before_the_first_run_without_matplotlib(tmp_path, monkeypatch, capsys):
    from megatron_patch.cli import study as study_cli

    stub = tmp_path / "stub_pretrain.py"
    stub.write_text("import sys; open(sys.argv[0] + '.ran', 'w').write('x')\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    argv = ["--out", str(tmp_path / "out"), "--train-tokens", "1000", "--controls", "1.0",
            "--launcher", "python", "--pretrain", str(stub)]
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        study_cli.main(argv)
    assert not (tmp_path / "stub_pretrain.py.ran").exists() and not (tmp_path / "out" / "runs").exists()
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        study_cli.main(["--regime-map", str(tmp_path / "map"), str(tmp_path)])
    assert study_cli.main([*argv, "--dry-run"]) == 0  # printing the commands needs no plots
    assert str(stub) in capsys.readouterr().out


def _imports(path, package):
    """Modules of `package` that the file imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == package:
                found |= {f"{package}.{a.name}" for a in node.names}
            elif node.module.startswith(package + "."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(package + ".")}
    return found


def test_no_import_cycle_among_the_analysis_modules():
    import megatron_patch.analysis as pkg

    package = pkg.__name__
    folder = os.path.dirname(pkg.__file__)
    modules = {f"{package}.{f[:-3]}": os.path.join(folder, f) for f in os.listdir(folder)
               if f.endswith(".py") and f != "__init__.py"}
    graph = {m: _imports(p, package) & set(modules) for m, p in modules.items()}
    assert {f"{package}.grid"} <= graph[f"{package}.results"]  # results reads the grid, not the launcher
    assert f"{package}.study" not in graph[f"{package}.results"] | graph[f"{package}.plots"]

    def visit(m, path):
        assert m not in path, "import cycle: " + " -> ".join(path[path.index(m):] + [m])
        for n in graph[m]:
            visit(n, path + [m])

    for m in graph:
        visit(m, [])
    # and the modules that launch and plot import nothing that needs matplotlib at import time
    for name in ("study", "results", "grid", "regime"):
        tree = ast.parse(open(modules[f"{package}.{name}"]).read())
        top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        assert not any("matplotlib" in t or t.endswith(".plots") for t in top), name
