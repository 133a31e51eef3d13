"""tools/gpu_check.py: the CPU smoke run of every part, its report's structure and values, and
the FLOPs count it uses (Megatron-LM's)."""
import json
import math
import subprocess
import sys

import pytest

from megatron_patch.training.flops import megatron_lm_flops
from megatron_patch.config import get_preset
from megatron_patch.training.flops import flops_per_position
from tests.distributed.train_common import ROOT, run_cmd


def test_megatron_lm_flops_of_the_370m_model():
    """Worked by hand from Megatron-LM's num_floating_point_operations (dense, SwiGLU, MHA):
    L=24, h=q=kv=1024, f=2752, V=32000 (already a multiple of 128), one sample of s=2048."""
    cfg = get_preset("370m")
    gemm = 24 * (1024 * (1024 + 2 * 1024) + 1024 * 1024 + 3 * 1024 * 2752) + 1024 * 32000
    assert gemm == 336_330_752
    per_position = 6 * gemm + 6 * 24 * 1024 * 2048  # causal attention: 6*L*q*s
    assert megatron_lm_flops(cfg, 1, 2048) == 2048 * per_position == pytest.approx(4.7513e12, rel=1e-4)
    assert megatron_lm_flops(cfg, 8, 2048) == 8 * megatron_lm_flops(cfg, 1, 2048)
    # flops.py does not halve attention for the causal mask: 13% more at s = 2048.
    ours = 2048 * flops_per_position(cfg, 1, 2048)
    assert ours / megatron_lm_flops(cfg, 1, 2048) == pytest.approx(1.1302, abs=1e-4)
    # Grouped-query attention shrinks the K/V projections only.
    gqa = get_preset("370m", num_query_groups=4)
    assert megatron_lm_flops(cfg, 1, 2048) - megatron_lm_flops(gqa, 1, 2048) == 2048 * 6 * 24 * 1024 * (2 * 1024 - 2 * 256)


def test_without_a_gpu_it_asks_for_smoke(tmp_path, capsys):
    from megatron_patch.cli.gpu_check import main

    assert main(["--output", str(tmp_path / "r.json")]) == 2
    assert "--smoke" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "report.json"
    proc = run_cmd([sys.executable, ROOT / "tools" / "gpu_check.py", "--smoke", "--output", out], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


def test_smoke_report_structure(smoke):
    report, stdout = smoke
    assert report["mode"] == "smoke" and report["passed"] is True
    assert list(report["parts"]) == ["environment", "sdpa_flash", "correctness", "speed", "training"]
    for name, part in report["parts"].items():
        assert "error" not in part, (name, part.get("traceback"))
        assert part["seconds"] >= 0
    env = report["parts"]["environment"]
    assert env["cuda_available"] is False and env["gpu"] is None
    assert env["layer_spec"] in ("te", "sdpa", "local")
    assert env["transformer_engine"]["ok"] in (True, False)
    # The printed table carries every part.
    assert "GPU check (smoke): PASSED" in stdout
    for name in report["parts"]:
        assert f"] {name} (" in stdout


def test_smoke_report_values(smoke):
    report, _ = smoke
    parts = report["parts"]
    assert parts["sdpa_flash"]["passed"] and parts["sdpa_flash"]["model_core_attention"]

    rows = parts["correctness"]["rows"]
    assert [r["patch_size"] for r in rows] == [1, 4]
    for r in rows:
        assert r["loss_dtype_bf16_model"] == "float32"
        assert 0 < r["loss_rel_diff"] <= 0.03  # > 0: the bf16 model really ran in bf16
        assert 0 < r["grad_rel_err_max"] <= 0.05

    s = parts["speed"]
    cfg = get_preset(s["preset"])
    T, mbs = s["positions"], s["micro_batch_size"]
    assert [r["patch_size"] for r in s["rows"]] == [1, 4]
    for r in s["rows"]:
        K = r["patch_size"]
        assert r["tokens_per_s"] == pytest.approx(mbs * T * K / r["step_s"])
        assert r["flops_per_step"] == pytest.approx(megatron_lm_flops(cfg, mbs, T))
        assert r["tflops"] == pytest.approx(r["flops_per_step"] / r["step_s"] / 1e12)
        assert r["mfu"] is None  # no known peak on a CPU
        assert r["peak_memory_gib"] > 0
    assert s["ratio_k4_over_k1"] == pytest.approx(s["rows"][1]["tokens_per_s"] / s["rows"][0]["tokens_per_s"])
    assert s["peak_tflops_bf16_dense"]["H100"] == 989.0 and s["peak_tflops_bf16_dense"]["A100"] == 312.0

    t = parts["training"]
    keys = {f"patch:{i}" for i in range(1, 26)} | {f"token:{i}" for i in range(1, 26)}
    for run in ("bf16", "bf16_resumed", "fp32"):
        assert set(t["losses"][run]) == keys, run
        assert all(math.isfinite(v) for v in t["losses"][run].values())
    assert t["stopped_and_resumed_at"] == "patch:15" and t["resumed_at_step"] == 15
    assert t["resumed_from_checkpoint"].endswith("iter_0000015")
    assert t["exit_codes"] == t["exit_codes_expected"] == {"bf16": 0, "bf16_stopped": 3, "bf16_resumed": 0, "fp32": 0}
    assert t["resume_bitwise"] is True  # CPU kernels are deterministic: the resume is exact
    assert 0 < t["bf16_vs_fp32_max_rel_diff"] <= 0.03
    assert t["loss_last"] < t["loss_first"]


def test_gpu_check_trains_through_the_training_api_not_a_command():
    """bench/ is a library: it calls the Trainer API that cli/pretrain.py calls, never a CLI's main."""
    import ast
    from pathlib import Path

    import megatron_patch.bench as bench

    for path in Path(bench.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("megatron_patch.cli") for n in names), (path.name, names)
