"""Hand-over variants (training/handover.py) against hand values: re-initialised groups are the
fresh draw, shrink and perturb is alpha * theta + sigma * theta_fresh, everything else is kept;
the plan carries the variants into the stages after the first; one LR schedule over the run;
the token stage alone (--stage token --handover-reinit all) needs no patch weights; the
output-projection init knob."""
import math

import pytest
import torch

from megatron_patch.training import handover
from megatron_patch.training.config import parse_config
from megatron_patch.training.metrics import read_metrics
from megatron_patch.training.stages import plan_stages, recipe
from tests.unit.training.test_knobs import BASE, PATCH, _train


def plan(*flags):
    return plan_stages(parse_config([*BASE, "--train-iters", "12", *PATCH, *flags]), 1)


def test_the_plan_puts_the_variant_on_every_stage_after_the_first():
    patch, token = plan("--handover-reinit", "out_proj,embedding", "--handover-shrink", "0.5",
                        "--handover-perturb", "0.25")
    assert (patch.reinit, patch.shrink, patch.perturb) == ((), 1.0, 0.0)
    assert (token.reinit, token.shrink, token.perturb) == (("out_proj", "embedding"), 0.5, 0.25)
    patch, token = plan()
    assert (token.reinit, token.shrink, token.perturb, token.starts_fresh) == ((), 1.0, 0.0, False)
    assert plan("--handover-reinit", "all")[1].starts_fresh
    cfg = parse_config([*BASE, "--train-iters", "12", *PATCH, "--handover-reinit", "layers",
                        "--output-proj-init", "plain", "--lr-schedule-scope", "run"])
    r = recipe(cfg)
    assert (r["handover_reinit"], r["handover_shrink"], r["handover_perturb"], r["lr_schedule_scope"],
            r["output_proj_init"]) == ("layers", 1.0, 0.0, "run", "plain")


@pytest.mark.parametrize("flags,message", [
    (["--handover-reinit", "embeddings"], "unknown group"),
    (["--handover-shrink", "-1"], "--handover-shrink must be a finite number >= 0"),
    (["--handover-reinit", "layers", "--handover-optimizer", "carry"], "use --handover-optimizer reset"),
    (["--lr-schedule-scope", "run", "--patch-lr", "1e-2"], "--patch-lr"),
])
def test_bad_variants_are_refused_with_the_fix(flags, message):
    with pytest.raises(ValueError, match=message):
        plan(*flags)


def test_one_schedule_over_the_run():
    patch, token = plan("--lr-schedule-scope", "run", "--lr-warmup-iters", "2")
    total = patch.train_iters + token.train_iters
    assert (patch.schedule_offset, patch.lr_warmup_iters, patch.lr_decay_iters) == (0, 2, total)
    assert (token.schedule_offset, token.lr_warmup_iters, token.lr_decay_iters) == (patch.train_iters, 2, total)


def _named(chunks):
    return {n: p.detach().clone() for c in chunks for n, p in c.named_parameters()}


def test_variant_weights_match_hand_values():
    from megatron_patch.training.builders import build_chunks
    from tests._inproc import world_of_one

    cfg = parse_config([*BASE, "--train-iters", "12", *PATCH])
    with world_of_one():
        chunks = build_chunks(cfg, patch_size=1)
        with torch.no_grad():  # "trained" weights: anything but an init
            for p in chunks[0].parameters():
                p.add_(0.5)
        trained = _named(chunks)
        with handover.seeded(handover.fresh_seed(cfg.train.seed, 1)):
            fresh = _named(build_chunks(cfg, patch_size=1))
        rng_before = torch.get_rng_state()
        token = plan("--handover-reinit", "out_proj,final_norm", "--handover-shrink", "0.6",
                     "--handover-perturb", "0.3")[1]
        line = handover.apply_at_start(cfg, token, 1, chunks, torch.float32)
        assert torch.equal(torch.get_rng_state(), rng_before)  # the run's own RNG is untouched
        got = _named(chunks)
    names = set(got)
    out_proj = {n for n in names if n.endswith("linear_proj.weight") or n.endswith("linear_fc2.weight")}
    assert len(out_proj) == 4 and "decoder.final_layernorm.weight" in names  # 2 layers x 2
    reinit = out_proj | {"decoder.final_layernorm.weight"}
    for n in names:
        if n in reinit:
            assert torch.equal(got[n], fresh[n]), n
        else:
            assert torch.allclose(got[n], 0.6 * trained[n] + 0.3 * fresh[n], atol=1e-7), n
    # The fresh draw is the model's own init: scaled output projections, unit norms.
    layers = cfg.model.num_layers
    proj = fresh["decoder.layers.0.self_attention.linear_proj.weight"]
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * layers), rel=0.1)
    assert torch.equal(fresh["decoder.final_layernorm.weight"], torch.ones_like(proj[0, :]))
    assert line.startswith("token stage hand-over: re-initialised 5 tensors (out_proj,final_norm); "
                           "shrink 0.6 and perturb 0.3 on ")


def test_reinit_all_and_plain_output_projection_init():
    from megatron_patch.training.builders import build_chunks
    from tests._inproc import world_of_one

    cfg = parse_config([*BASE, "--train-iters", "12", *PATCH, "--output-proj-init", "plain"])
    with world_of_one():
        chunks = build_chunks(cfg, patch_size=1)
        token = plan("--handover-reinit", "all")[1]
        handover.apply_at_start(cfg, token, 1, chunks, torch.float32)
        got = _named(chunks)
        with handover.seeded(handover.fresh_seed(cfg.train.seed, 1)):
            fresh = _named(build_chunks(cfg, patch_size=1))
    assert all(torch.equal(got[n], fresh[n]) for n in got)
    proj = got["decoder.layers.1.mlp.linear_fc2.weight"]
    assert proj.std().item() == pytest.approx(0.02, rel=0.1)  # plain: no 1/sqrt(2L)


def test_token_stage_alone_needs_no_patch_weights_and_reproduces(tmp_path):
    """--stage token --handover-reinit all in a fresh run directory: the patch run's token stage
    (same steps, data range, schedule) from a fresh init; twice the same losses."""
    flags = ["--train-iters", "8", *PATCH, "--stage", "token", "--handover-reinit", "all"]
    _train(tmp_path / "a", *flags)
    _train(tmp_path / "b", *flags)
    a = [(r["stage"], r["step"], r["loss"]) for r in read_metrics(str(tmp_path / "a")) if r["kind"] == "train"]
    b = [(r["stage"], r["step"], r["loss"]) for r in read_metrics(str(tmp_path / "b")) if r["kind"] == "train"]
    assert a == b and [s for _, s, _ in a] == [1, 2, 3, 4] and {st for st, _, _ in a} == {"token"}
    assert a[0][2] == pytest.approx(math.log(300), abs=0.3)  # a fresh model's loss, not a trained one's


def test_one_schedule_over_the_run_trains_without_a_second_warmup(tmp_path):
    _train(tmp_path / "run", "--train-iters", "8", *PATCH, "--lr-schedule-scope", "run",
           "--lr-warmup-iters", "2", "--lr-decay-style", "linear")
    lrs = [r["lr"] for r in read_metrics(str(tmp_path / "run")) if r["kind"] == "train"]
    # The lr of step s is the schedule at s-1 steps: warmup 0, 1.5e-3, then 3e-3, then one linear
    # decay to 3e-4 at step 8 of both stages (4 + 4): the token stage continues the patch stage's.
    expected = [0.0, 1.5e-3] + [3e-4 + (3e-3 - 3e-4) * (1 - (n - 2) / 6) for n in range(2, 8)]
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12), lrs
