"""FFN neuron activation shares (megatron_patch.analysis.activation, tools/neuron_activation.py).

The paper's definition on a hand-computed case; on a tiny random model: one share per layer in
[0, 1], K=1 and K=4 differ, and the hooked counts equal a direct computation (the MLP's output
for "paper", the FFN input and gate weights for "gate"); the CLI's table, CSV and plot."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from megatron_patch.analysis.activation import (
    activated_pairs,
    activation_shares,
    as_patch_size,
    compare_models,
    model_name,
)
from megatron_patch.config import ParallelConfig, get_preset
from megatron_patch.model import build_model
from tests._inproc import world_of_one

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TOOL = os.path.join(ROOT, "tools", "neuron_activation.py")


# ----------------------------------------------------------------------------- the paper's measure by hand


class _FixedLinear(torch.nn.Module):
    """Returns a fixed (output, bias) whatever its input, like a megatron linear with skip_bias_add."""

    def __init__(self, out, bias=None):
        super().__init__()
        self.out, self.bias = out, bias

    def forward(self, x):
        return self.out, self.bias


class _StubModel(torch.nn.Module):
    """decoder.layers[i].mlp.linear_fc2 with fixed outputs; forward runs every layer once."""

    def __init__(self, outputs):
        super().__init__()
        self.patch_size = 1
        self.config = SimpleNamespace(gated_linear_unit=True)
        layers = []
        for n, (out, bias) in enumerate(outputs, 1):
            layer = torch.nn.Module()
            layer.layer_number = n
            layer.mlp = torch.nn.Module()
            layer.mlp.linear_fc2 = _FixedLinear(out, bias)
            layers.append(layer)
        self.decoder = SimpleNamespace(layers=torch.nn.ModuleList(layers))

    def forward(self, tokens, position_ids, attention_mask):
        for layer in self.decoder.layers:
            layer.mlp.linear_fc2(None)


def test_paper_definition_hand_computed():
    # Layer 1, 2 positions x h=3: |0.6|, |-0.7|, |-0.51| exceed 0.5; 0.5 itself does not -> 3 of 6.
    out1 = torch.tensor([[[0.6, -0.7, 0.1]], [[0.5, 0.2, -0.51]]])  # [s=2, b=1, h=3]
    # Layer 2 with linear_fc2's bias (0.2 on the first neuron), added before the test:
    # 0.4+0.2=0.6, 0.35+0.2=0.55 and -2.0 exceed 0.5 in absolute value -> 3 of 6 (1 of 6 without the bias).
    out2 = torch.tensor([[[0.4, 0.0, -2.0]], [[0.35, 0.0, 0.0]]])
    bias2 = torch.tensor([0.2, 0.0, 0.0])
    assert activated_pairs(out1, "paper", 0.5) == (3, 6)
    assert activated_pairs(out2, "paper", 0.5) == (1, 6)
    assert activated_pairs(out2 + bias2, "paper", 0.5) == (3, 6)
    model = _StubModel([(out1, None), (out2, bias2)])
    tokens = torch.zeros(2, 4, dtype=torch.long)  # two micro-batches of one: each layer counted twice
    assert activation_shares(model, tokens, [1])[1] == [3 / 6, 3 / 6]  # default: paper, 0.5
    # threshold 0: every non-zero value counts -> 6 of 6 and 3 of 6
    assert activation_shares(model, tokens, [1], threshold=0.0)[1] == [1.0, 3 / 6]
    # "gate" counts silu(gate) > threshold over the first half of linear_fc1's [gate; up]
    gate_up = torch.tensor([[[1.0, -1.0, 9.0, 9.0]], [[-3.0, 2.0, 9.0, 9.0]]])  # gate = first 2
    assert activated_pairs(gate_up, "gate", 0.0) == (2, 4)
    measured = compare_models([("a", model, 1), ("b", model, 2)], tokens)
    assert [(m.name, m.patch_size, m.shares) for m in measured] == [("a", 1, [0.5, 0.5]), ("b", 2, [0.5, 0.5])]


def test_model_names():
    assert model_name("runs/study/runs/K4-lam0.6667-same_tokens/patch") == "K4-lam0.6667-same_tokens"
    assert model_name("runs/x/token/iter_0000020/") == "x"
    assert model_name("ckpt") == "ckpt"


# ----------------------------------------------------------------------------- a tiny real model


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


def direct_paper_shares(model, tokens, K, threshold):
    """|MLP output| > threshold, captured at each layer's MLP (not at linear_fc2). A copy: the
    bias-dropout-add that follows may update the MLP's output in place."""
    outputs = {}

    def keep(n, o):
        out, bias = o
        outputs.setdefault(n, []).append((out.clone(), None if bias is None else bias.clone()))

    handles = [layer.mlp.register_forward_hook(lambda m, i, o, n=layer.layer_number: keep(n, o))
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
        pieces = []
        for out, bias in outputs[layer.layer_number]:
            pieces.append((out if bias is None else out + bias).reshape(-1, out.size(-1)))
        y = torch.cat(pieces)
        assert y.shape == (tokens.numel() // K, model.config.hidden_size)
        shares.append((y.abs() > threshold).float().mean().item())
    return shares


# A random model's FFN outputs are about 1e-3 (0.02-std init): the paper's 0.5 would count
# nothing, so the paper definition is exercised here at thresholds of that size.
LOW = {"paper": (5e-4, 1e-3), "gate": (0.0, 0.1)}


@pytest.mark.parametrize("definition", ["paper", "gate"])
def test_shares_per_layer_in_unit_interval_and_k_differs(tiny, definition):
    model, cfg, tokens = tiny
    shares = activation_shares(model, tokens, [1, 4], LOW[definition][0], definition=definition)
    assert set(shares) == {1, 4}
    for K in (1, 4):
        assert len(shares[K]) == cfg.num_layers
        assert all(0.0 <= s <= 1.0 for s in shares[K])
    assert shares[1] != shares[4]
    assert model.patch_size == 4 and model.training  # state restored


@pytest.mark.parametrize("K, threshold", [(1, 0.0), (4, 0.0), (4, 0.05)])
def test_gate_definition_matches_direct_computation(tiny, K, threshold):
    model, _, tokens = tiny
    hooked = activation_shares(model, tokens, [K], threshold, micro_batch_size=2, definition="gate")[K]
    assert hooked == pytest.approx(direct_shares(model, tokens, K, threshold), abs=1e-6)


@pytest.mark.parametrize("K, threshold", [(1, 1e-3), (4, 1e-3), (4, 5e-4)])
def test_paper_definition_matches_direct_computation(tiny, K, threshold):
    model, _, tokens = tiny
    hooked = activation_shares(model, tokens, [K], threshold, micro_batch_size=2)[K]
    assert hooked == pytest.approx(direct_paper_shares(model, tokens, K, threshold), abs=1e-6)


@pytest.mark.parametrize("definition", ["paper", "gate"])
def test_threshold_is_monotone_and_length_checked(tiny, definition):
    model, _, tokens = tiny
    low = activation_shares(model, tokens, [1], LOW[definition][0], definition=definition)[1]
    high = activation_shares(model, tokens, [1], LOW[definition][1], definition=definition)[1]
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
    assert "|output| > 0.5" in proc.stdout and "| layer | share K=1 | share K=4 |" in proc.stdout
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "layer,share_K1,share_K4,diff" and len(lines) == 1 + 4 + 1  # layers + mean
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Clear errors: missing checkpoint, missing data, a sample longer than the data.
    proc = _run("--load", str(tmp_path / "nope"), "--random-tokens")
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    proc = _run("--load", str(tmp_path), "--random-tokens")
    assert proc.returncode != 0 and "latest_checkpointed_iteration.txt" in proc.stderr
    proc = _run("--random-init", "--data-path", str(tmp_path / "missing"))
    assert proc.returncode != 0 and "missing.bin" in proc.stderr
    proc = _run("--random-init", "--data-path", prefix, "--num-samples", "1000")
    assert proc.returncode != 0 and "the sample needs" in proc.stderr


def test_cli_loads_checkpoints(tmp_path):
    """Weights saved with the trainer's checkpoint writer give the same shares through the CLI:
    one model (K=1 against K=4, the gate definition), then two models each at its run's K."""
    pytest.importorskip("megatron_patch.training.checkpointing")
    from megatron_patch.training.checkpointing import save_checkpoint
    from megatron_patch.training.config import config_from_dict

    def run_config(**train):  # what a finished run saves beside its checkpoints
        return config_from_dict({
            "model": {"preset": "tiny", "transformer_impl": "sdpa"},
            "data": {"mock_data": True, "tokenizer_type": "NullTokenizer", "vocab_size": 1000},
            "train": {"train_iters": 10, **train}})

    cfg_1, cfg_4 = run_config(), run_config(patch_size=4, patch_fraction=0.5)
    with world_of_one(seed=99):
        model_1 = build_model(cfg_1.model, ParallelConfig(), patch_size=1)
        model_4 = build_model(cfg_4.model, ParallelConfig(), patch_size=4)
        save_checkpoint(str(tmp_path / "run1" / "token"), cfg_1, [model_1])  # weights only: release/
        save_checkpoint(str(tmp_path / "run4" / "patch"), cfg_4, [model_4])
        tokens = torch.randint(0, cfg_1.model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(5))
        gate = activation_shares(model_1, tokens, [1, 4], definition="gate")
        paper = {"run1": activation_shares(model_1, tokens, [1])[1],
                 "run4": activation_shares(model_4, tokens, [4])[4]}
    sample = ["--random-tokens", "--seed", "5", "--seq-length", "32", "--num-samples", "2"]
    csv_path = tmp_path / "n.csv"
    proc = _run("--load", str(tmp_path / "run1"), *sample, "--definition", "gate",
                "--format", "csv", "--csv", str(csv_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:-1]]
    assert [float(r[1]) for r in rows] == pytest.approx(gate[1], abs=1e-6)
    assert [float(r[2]) for r in rows] == pytest.approx(gate[4], abs=1e-6)
    assert proc.stdout.startswith("layer,share_K1,share_K4,diff")

    png = tmp_path / "models.png"
    proc = _run("--load", str(tmp_path / "run1"), str(tmp_path / "run4" / "patch"), *sample,
                "--csv", str(csv_path), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| layer | run1 (K=1) | run4 (K=4) |" in proc.stdout
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "layer,share_run1,share_run4" and lines[-1].startswith("mean,")
    rows = [line.split(",") for line in lines[1:-1]]
    assert [float(r[1]) for r in rows] == pytest.approx(paper["run1"], abs=1e-6)
    assert [float(r[2]) for r in rows] == pytest.approx(paper["run4"], abs=1e-6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = _run("--load", str(tmp_path / "run1"), str(tmp_path / "run4"), "--patch-size", "2", *sample)
    assert proc.returncode != 0 and "own K" in proc.stderr
