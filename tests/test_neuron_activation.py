"""FFN neuron activation shares (megatron_patch.analysis.activation, tools/neuron_activation.py)
on a tiny random model: one share per layer in [0, 1], K=1 and K=4 differ, and the hooked
count equals a direct computation from each layer's FFN input and gate weights."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from megatron_patch.analysis.activation import activation_shares, as_patch_size
from megatron_patch.config import ParallelConfig, get_preset
from megatron_patch.model import build_model
from tests._inproc import world_of_one

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "neuron_activation.py")


@pytest.fixture(scope="module")
def tiny():
    with world_of_one():
        cfg = get_preset("tiny", transformer_impl="sdpa")
        model = build_model(cfg, ParallelConfig(), patch_size=4)
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, cfg.vocab_size, (3, 64), generator=g)
        yield model, cfg, tokens


def direct_shares(model, tokens, K, threshold):
    """silu(x @ W_gate^T) > threshold from the FFN input x, captured at pre_mlp_layernorm."""
    inputs = {}
    handles = [layer.pre_mlp_layernorm.register_forward_hook(
        lambda m, i, o, n=layer.layer_number: inputs.setdefault(n, []).append(o))
        for layer in model.decoder.layers]
    try:
        with torch.no_grad(), as_patch_size(model, K):
            model.eval()
            model(tokens, None, None)
    finally:
        for h in handles:
            h.remove()
    shares = []
    for layer in model.decoder.layers:
        w = layer.mlp.linear_fc1.weight  # [2*ffn, h]: gate rows first, then up
        ffn = w.size(0) // 2
        x = torch.cat([t.reshape(-1, t.size(-1)) for t in inputs[layer.layer_number]])
        gate = F.silu(x @ w[:ffn].T)
        assert gate.shape == (tokens.numel() // K, ffn)
        shares.append((gate > threshold).float().mean().item())
    return shares


def test_shares_per_layer_in_unit_interval_and_k_differs(tiny):
    model, cfg, tokens = tiny
    shares = activation_shares(model, tokens, [1, 4])
    assert set(shares) == {1, 4}
    for K in (1, 4):
        assert len(shares[K]) == cfg.num_layers
        assert all(0.0 <= s <= 1.0 for s in shares[K])
    assert shares[1] != shares[4]
    assert model.patch_size == 4 and model.training  # state restored


@pytest.mark.parametrize("K, threshold", [(1, 0.0), (4, 0.0), (4, 0.05)])
def test_definition_matches_direct_computation(tiny, K, threshold):
    model, _, tokens = tiny
    hooked = activation_shares(model, tokens, [K], threshold, micro_batch_size=2)[K]
    assert hooked == pytest.approx(direct_shares(model, tokens, K, threshold), abs=1e-6)


def test_threshold_is_monotone_and_length_checked(tiny):
    model, _, tokens = tiny
    low = activation_shares(model, tokens, [1], 0.0)[1]
    high = activation_shares(model, tokens, [1], 0.1)[1]
    assert all(h < lo for h, lo in zip(high, low))
    with pytest.raises(ValueError, match="multiple of patch size"):
        activation_shares(model, tokens[:, :62], [1, 4])


def _run(*args):
    # A world of its own: drop the rendezvous variables an in-process world of one may have set.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=180, env={**env, "OMP_NUM_THREADS": "1"})


def test_cli_random_init_table_csv_plot(tmp_path):
    from tests._data_helpers import random_documents, write_indexed

    prefix = write_indexed(str(tmp_path / "d_text_document"), random_documents(40, seed=3, vocab=1000))
    csv_path, png = tmp_path / "n.csv", tmp_path / "n.png"
    proc = _run("--random-init", "--model", "tiny", "--data-path", prefix, "--seq-length", "64",
                "--num-samples", "2", "--csv", str(csv_path), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "silu(gate_j) > 0" in proc.stdout and "| layer | share K=1 | share K=4 |" in proc.stdout
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "layer,share_K1,share_K4,diff" and len(lines) == 1 + 4 + 1  # layers + mean
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Clear errors: missing checkpoint, missing data, a sample longer than the data.
    proc = _run("--load", str(tmp_path / "nope"), "--random-tokens")
    assert proc.returncode != 0 and "no such directory" in proc.stderr
    proc = _run("--load", str(tmp_path), "--random-tokens")
    assert proc.returncode != 0 and "latest_checkpointed_iteration.txt" in proc.stderr
    proc = _run("--random-init", "--data-path", str(tmp_path / "missing"))
    assert proc.returncode != 0 and "missing.bin" in proc.stderr
    proc = _run("--random-init", "--data-path", prefix, "--num-samples", "1000")
    assert proc.returncode != 0 and "the sample needs" in proc.stderr


def test_cli_loads_a_checkpoint(tmp_path):
    """Weights saved with the trainer's checkpoint writer give the same shares through the CLI."""
    pytest.importorskip("megatron_patch.training.checkpointing")
    from megatron_patch.training.checkpointing import save_checkpoint
    from megatron_patch.training.config import config_from_dict

    cfg = config_from_dict({"model": {"preset": "tiny", "transformer_impl": "sdpa"}})
    with world_of_one(seed=99):
        model = build_model(cfg.model, ParallelConfig(), patch_size=4)
        save_checkpoint(str(tmp_path / "ckpt"), cfg, [model])  # weights only: release/
        tokens = torch.randint(0, cfg.model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(5))
        expected = activation_shares(model, tokens, [1, 4])
    csv_path = tmp_path / "n.csv"
    proc = _run("--load", str(tmp_path / "ckpt"), "--random-tokens", "--seed", "5", "--seq-length", "32",
                "--num-samples", "2", "--format", "csv", "--csv", str(csv_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:-1]]
    assert [float(r[1]) for r in rows] == pytest.approx(expected[1], abs=1e-6)
    assert [float(r[2]) for r in rows] == pytest.approx(expected[4], abs=1e-6)
    assert proc.stdout.startswith("layer,share_K1,share_K4,diff")
