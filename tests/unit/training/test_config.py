"""Run configs (every YAML under examples/configs), the flag/YAML parser, the stage plan, FLOPs."""
import glob
import os

import pytest
import yaml

from megatron_patch.training.config import (
    FLAGS, build_parser, config_from_dict, parse_config, to_dict, to_yaml,
)
from megatron_patch.training.flops import flops_per_step, token_only_flops
from megatron_patch.training.stages import plan_stages
from tests import ROOT as _ROOT

ROOT = str(_ROOT)
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "examples", "configs", "*.yaml")))
DATA = ["--data-path", "corpus_text_document", "--tokenizer-model", "tok.model"]


def test_every_example_config_validates():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"370m.yaml", "780m.yaml", "1_3b.yaml", "2_7b.yaml", "cpu_demo.yaml", "study_cpu.yaml"} <= names
    for path in CONFIGS:
        # study_cpu.yaml has no budget or K: tools/study.py passes them per run (each K of the study).
        runs = ([["--train-tokens", "1600000", "--patch-size", str(k), "--patch-fraction", "0.6667"]
                 for k in (2, 4, 8)] if os.path.basename(path) == "study_cpu.yaml" else [[]])
        for extra in runs:
            cfg = parse_config(["--config", path, *DATA, *extra])  # validates
            # The study runs one process (tools/study.py --launcher python); the demo two.
            world = 1 if extra else 2 if cfg.model_preset.startswith("cpu") else 64
            dp = world // (cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size)
            stages = plan_stages(cfg, dp)
            assert stages and stages[-1].name == "token"
            assert config_from_dict(yaml.safe_load(to_yaml(cfg))) == cfg, path  # the resolved config round-trips


@pytest.mark.parametrize("name,hidden,layers", [("370m", 1024, 24), ("780m", 1536, 24),
                                                ("1_3b", 2048, 24), ("2_7b", 2560, 32)])
def test_paper_configs_carry_the_paper_recipe(name, hidden, layers):
    cfg = parse_config(["--config", os.path.join(ROOT, "examples", "configs", f"{name}.yaml"), *DATA])
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.tie_embeddings) == (hidden, layers, False)
    t, o = cfg.train, cfg.optim
    assert (t.patch_size, t.patch_fraction, t.seq_length, t.bf16) == (4, pytest.approx(2 / 3), 2048, True)
    assert (o.adam_beta1, o.adam_beta2, o.adam_eps, o.lr, o.lr_warmup_iters) == (0.9, 0.95, 1e-8, 3e-4, 2000)
    assert (o.weight_decay, o.clip_grad, o.lr_decay_style) == (0.1, 1.0, "cosine")
    assert t.global_batch_size * t.seq_length == 2 ** 21  # ~2M tokens per step
    patch, token = plan_stages(cfg, 8)
    assert patch.tokens_per_step == token.tokens_per_step  # same_tokens: 4x fewer, 4x longer samples
    assert (patch.global_batch_size, patch.positions) == (256, 2048)
    assert patch.train_iters == pytest.approx(2 * token.train_iters, abs=1)


def test_flags_override_yaml_and_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {preset: tiny, num_layers: 2}\noptim: {lr: 3e-4}\n"
                    "train: {train_iters: 10, patch_fraction: 2/3}\n")
    cfg = parse_config(["--config", str(path), "--lr", "1e-3", "--patch-size", "4", "--fp32",
                        "--use-distributed-optimizer", "--data-path", "0.3", "A", "0.7", "B", "--seed", "5",
                        "--tokenizer-model", "tok.model"])
    assert (cfg.model.num_layers, cfg.model.hidden_size) == (2, 64)
    assert cfg.optim.lr == 1e-3 and cfg.optim.min_lr == 3e-5  # flag > YAML > default
    assert cfg.train.patch_fraction == pytest.approx(2 / 3) and cfg.train.patch_size == 4
    assert cfg.train.bf16 is False and cfg.optim.use_distributed_optimizer is True
    assert cfg.data.data_path == ["0.3", "A", "0.7", "B"] and cfg.train.seed == 5
    assert to_dict(cfg)["model"] == {"preset": "tiny", "num_layers": 2}
    for flag, (section, name) in FLAGS.items():  # every flag names a real field
        assert name in (to_dict(cfg)[section] if section != "model" else {**vars(cfg.model), "preset": 0}), flag


@pytest.mark.parametrize("yaml_text,flags,message", [
    ("optim: {lrr: 1}", [], "unknown key optim.lrr"),
    ("trian: {}", [], "unknown config section"),
    ("", ["--lr", "fast"], "cannot read 'fast'"),
    ("", [], "exactly one budget"),
    ("", ["--train-iters", "10", "--train-tokens", "100"], "exactly one budget"),
    ("", ["--train-iters", "10", "--global-batch-size", "6", "--micro-batch-size", "4"], "not a multiple"),
    ("", ["--train-iters", "10", "--patch-size", "4", "--patch-seq-length", "30"], "use e.g. 28"),
    ("", ["--train-iters", "10", "--patch-fraction", "1.5"], "[0, 1]"),
    ("", ["--train-iters", "10", "--patch-size", "0"], "--patch-size must be an integer >= 1"),
    ("", ["--train-iters", "10", "--patch-size", "2.5"], "cannot read '2.5' as int"),
    ("", ["--train-iters", "10", "--stage", "patch"], "--patch-size > 1"),
    ("", ["--train-iters", "10", "--min-lr", "1", "--lr", "0.1"], "--min-lr"),
    ("", ["--train-iters", "10", "--lr", "nan"], "finite"),
    ("", ["--train-iters", "10", "--lr", "inf"], "finite"),
    ("", ["--train-iters", "10", "--lr", "5"], "not a usable learning rate"),
    ("", ["--train-iters", "10", "--adam-eps", "0"], "--adam-eps"),
    ("", ["--train-iters", "10", "--adam-beta2", "1.0"], "betas"),
    ("", ["--train-iters", "10", "--weight-decay", "-0.1"], "--weight-decay"),
    ("", ["--train-iters", "10", "--clip-grad", "-1"], "--clip-grad"),
    ("", ["--train-iters", "10", "--split", "90,x,1"], "--split"),
    ("", ["--train-iters", "10", "--split", "0,5,5"], "--split"),
    ("", ["--train-iters", "10", "--eval-iters", "-1"], "--eval-iters"),
    ("", ["--train-iters", "10", "--normalization", "LayerNorm"], "not supported"),
    ("", ["--train-iters", "10", "--position-embedding-type", "learned_absolute"], "not supported"),
    ("", ["--train-iters", "10", "--patch-lr", "0"], "--patch-lr 0.0 is not a usable"),
    ("", ["--train-iters", "10", "--patch-lr", "1e-5"], "--patch-min-lr"),
    ("", ["--train-iters", "10", "--patch-min-lr", "nan"], "finite"),
    ("", ["--train-iters", "10", "--token-lr-warmup-iters", "-1"], "--token-lr-warmup-iters"),
    ("", ["--train-iters", "10", "--handover-optimizer", "keep"], "reset, carry"),
    ("", ["--train-iters", "10", "--patch-schedule", "4-0.5"], "lacks ':'"),
    ("", ["--train-iters", "10", "--patch-schedule", "4:x"], "K:fraction pairs"),
    ("", ["--train-iters", "10", "--patch-schedule", "2:0.3,4:0.3"], "strictly decreasing"),
    ("", ["--train-iters", "10", "--patch-schedule", "4:0.3,1:0.3"], "K must be >= 2"),
    ("", ["--train-iters", "10", "--patch-schedule", "4:0.7,2:0.4"], "sum"),
    ("", ["--train-iters", "10", "--patch-schedule", "4:0.5,3:0.1", "--patch-seq-length", "32"], "use e.g. 30"),
    ("", ["--train-iters", "10", "--patch-target-decay", "0"], "--patch-target-decay"),
    ("", ["--train-iters", "10", "--patch-mean-dtype", "bf16"], "fp32, param"),
])
def test_config_errors_say_the_fix(tmp_path, yaml_text, flags, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(["--config", str(path), "--model", "tiny", *DATA, *flags])


def test_stage_plan_budget():
    base = [*DATA, "--seq-length", "64", "--global-batch-size", "8", "--micro-batch-size", "1",
            "--lr-warmup-iters", "1", "--model", "tiny"]
    cfg = parse_config([*base, "--train-iters", "30", "--patch-size", "4", "--patch-fraction", "2/3"])
    patch, token = plan_stages(cfg, 2)
    assert (patch.name, patch.patch_size, patch.train_iters, token.train_iters) == ("patch", 4, 20, 10)
    assert (patch.seq_length, patch.positions, patch.global_batch_size) == (256, 64, 2)  # K*seq, gbs/K
    assert patch.train_range == (0.0, pytest.approx(2 / 3)) and token.train_range == (pytest.approx(2 / 3), 1.0)
    # same_sequences: K x the tokens per step, so K x fewer steps cover the same data.
    cfg = parse_config([*base, "--train-iters", "30", "--patch-size", "4", "--patch-fraction", "2/3",
                        "--patch-batch-policy", "same_sequences"])
    patch, token = plan_stages(cfg, 2)
    assert (patch.global_batch_size, patch.train_iters, token.train_iters) == (8, 5, 10)
    # --train-tokens: N = ceil(tokens / (gbs * seq)); K = 1 or lambda = 0 is one token stage.
    cfg = parse_config([*base, "--train-tokens", "5000"])
    (only,) = plan_stages(cfg, 2)
    assert (only.name, only.train_iters, only.train_range) == ("token", 10, (0.0, 1.0))
    with pytest.raises(ValueError, match="cannot be shared by 2 data-parallel ranks"):
        plan_stages(parse_config([*base, "--train-iters", "30", "--patch-size", "8",
                                  "--patch-fraction", "0.5"]), 2)


def test_flops_account_matches_the_ideal_ratio():
    cfg = parse_config([*DATA, "--config", os.path.join(ROOT, "examples", "configs", "370m.yaml")])
    patch, token = plan_stages(cfg, 8)
    total = patch.train_iters * flops_per_step(cfg.model, patch) + token.train_iters * flops_per_step(cfg.model, token)
    tokens = patch.train_iters * patch.tokens_per_step + token.train_iters * token.tokens_per_step
    ratio = total / token_only_flops(cfg.model, tokens, cfg.train.seq_length)
    assert ratio == pytest.approx(2 / 3 / 4 + 1 / 3, rel=1e-3)  # same T per position in both stages


def test_a_run_needs_a_model():
    with pytest.raises(ValueError, match="no model: give a preset"):
        parse_config([*DATA, "--train-iters", "10"])
    cfg = parse_config([*DATA, "--train-iters", "10", "--num-layers", "2", "--hidden-size", "96",
                        "--num-attention-heads", "4"])
    assert cfg.model_preset is None and cfg.model.ffn_hidden_size == 256  # Megatron's SwiGLU default


def test_help_is_the_field_docstrings():
    text = build_parser().format_help()
    assert "Peak learning rate." in text and "--lr X" in text and "optim.lr" not in text
    for flag in FLAGS:  # every field's flag is there, and no flag is defined twice
        assert flag in text, flag
    assert len(FLAGS) == len(set(FLAGS))


def test_a_budget_flag_replaces_the_configs_budget():
    path = os.path.join(ROOT, "examples", "configs", "2_7b.yaml")  # has train_tokens
    cfg = parse_config(["--config", path, *DATA, "--train-iters", "10"])
    assert (cfg.train.train_iters, cfg.train.train_tokens) == (10, None)
    assert cfg.parallel.tensor_model_parallel_size == 2  # everything else stays the config's


# --- Megatron-LM's launch lines, flags and defaults ---------------------------------------------

MOCK = ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "500"]


def _example(name, **kw):
    from tests.megatron_lm_examples import argv

    paths = {"DATA": "corpus_text_document", "TOKENIZER": "tok.model", "SAVE": "runs/x", "TB": "tb",
             "CACHE": "cache", "VOCAB": "vocab.json", "MERGES": "merges.txt"}
    line = argv(name, paths, **kw)
    if "--vocab-file" not in FLAGS and "--vocab-file" in line:  # GPT-2 BPE files not (yet) taken
        i = line.index("--vocab-file")
        line[i:i + 4] = ["--tokenizer-model", "tok.model"]
    return line


@pytest.mark.parametrize("name", ["gpt3_175b", "llama3_8b_mock", "llama3_8b_data", "mixtral_8x7b"])
def test_megatron_lm_example_lines(name):
    """Each of Megatron-LM's example launch lines is refused for exactly what cannot be honoured,
    each with its reason; without those flags it parses, and scaled down it plans both stages."""
    from tests.megatron_lm_examples import REFUSED

    with pytest.raises(ValueError) as err:
        parse_config(_example(name) + ["--patch-size", "4", "--patch-fraction", "2/3"])
    named = {line.split(":")[0].split()[0] for line in str(err.value).splitlines()[1:]}
    assert named == REFUSED[name], str(err.value)
    cfg = parse_config(_example(name, drop_refused=True) + ["--patch-size", "4", "--patch-fraction", "2/3"])
    assert cfg.train.patch_phases() == [(4, pytest.approx(2 / 3))]
    small = parse_config(_example(name, drop_refused=True, scale=True)
                         + ["--patch-size", "4", "--patch-fraction", "0.5"])
    patch, token = plan_stages(small, 2)
    assert (patch.patch_size, token.patch_size) == (4, 1)


def test_lr_decay_and_warmup_split_between_stages():
    base = ["--model", "tiny", *MOCK, "--seq-length", "32", "--global-batch-size", "8",
            "--patch-size", "4", "--patch-fraction", "0.5"]
    # Iterations: decay over 60 of 80 steps, warmup 10% of the decay; each stage keeps the shares.
    patch, token = plan_stages(parse_config([*base, "--train-iters", "80", "--lr-decay-iters", "60",
                                             "--lr-warmup-fraction", "0.1"]))
    assert (patch.train_iters, patch.lr_decay_iters, patch.lr_warmup_iters) == (40, 30, 3)
    assert (token.train_iters, token.lr_decay_iters, token.lr_warmup_iters) == (40, 30, 3)
    # Samples: the same in Megatron-LM's sample spelling; warmup samples are steps of every stage.
    patch, token = plan_stages(parse_config([*base, "--train-samples", "640", "--lr-decay-samples", "480",
                                             "--lr-warmup-samples", "16"]))
    assert (patch.lr_decay_iters, patch.lr_warmup_iters, token.lr_decay_iters, token.lr_warmup_iters) == (30, 2, 30, 2)
    # Without them: decay over each stage's steps, --lr-warmup-iters in each stage.
    patch, token = plan_stages(parse_config([*base, "--train-iters", "80", "--lr-warmup-iters", "5"]))
    assert (patch.lr_decay_iters, patch.lr_warmup_iters, token.lr_decay_iters) == (40, 5, 40)
    with pytest.raises(ValueError, match="give one warmup"):
        parse_config([*base, "--train-iters", "80", "--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "5"])
    parse_config([*base, "--train-iters", "80", "--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "0"])
    with pytest.raises(ValueError, match="warmup must be shorter than the decay"):
        plan_stages(parse_config([*base, "--train-iters", "80", "--lr-decay-iters", "8", "--lr-warmup-iters", "5"]))


def test_one_value_flags_and_accepted_no_ops():
    base = ["--model", "tiny", *MOCK, "--train-iters", "10"]
    cfg = parse_config([*base, "--ckpt-format", "torch_dist", "--use-mcore-models", "--num-workers", "8",
                        "--context-parallel-size", "1", "--kv-channels", "16"])
    assert any(n.startswith("--num-workers") for n in cfg.megatron_notes)
    assert any(n.startswith("--use-mcore-models") for n in cfg.megatron_notes)
    for flags, message in ((["--ckpt-format", "torch"], "--ckpt-format torch: checkpoints are"),
                           (["--context-parallel-size", "2"], "context parallelism is not supported"),
                           (["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
                             "--kv-channels", "32"], "--kv-channels 32")):
        with pytest.raises(ValueError, match=message):
            parse_config([*base, *flags])
    help_text = build_parser().format_help()
    assert "--use-mcore-models" in help_text and "always the case" in help_text
    assert "split between stages" in " ".join(help_text.split())


def test_defaults_that_differ_from_megatron_lm_are_printed_when_unset(monkeypatch, capsys):
    from megatron_patch import device
    from megatron_patch.training.megatron_flags import defaults_notice, print_notes

    shape = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", *MOCK]
    cfg = parse_config([*shape, "--train-iters", "10", "--weight-decay", "0.01"])
    notice = defaults_notice(cfg)
    assert notice.startswith("defaults that differ from Megatron-LM's, not set on this launch:")
    assert "--lr-warmup-iters 2000 (Megatron-LM: 0)" in notice and "--adam-beta2 0.95 (Megatron-LM: 0.999)" in notice
    assert "--min-lr 3e-5 (Megatron-LM: 0)" in notice and "--normalization RMSNorm" in notice
    assert "--weight-decay" not in notice and "--bf16" not in notice  # set; fp32 on a CPU as Megatron-LM
    monkeypatch.setattr(device, "on_gpu", lambda: True)
    assert "--bf16 on, on a GPU (Megatron-LM: off (fp32))" in defaults_notice(cfg)
    monkeypatch.undo()
    fraction = parse_config([*shape, "--train-iters", "10", "--lr-warmup-fraction", "0.1"])
    assert "--lr-warmup-iters" not in defaults_notice(fraction)
    print_notes(cfg)
    print_notes(cfg)
    assert capsys.readouterr().out.count("defaults that differ") == 1  # once per launch
    # Every entry names a real flag of the parser, and every default it quotes is the field's.
    from megatron_patch.training.megatron_flags import MEGATRON_DEFAULTS

    for flag, section, name, _, _ in MEGATRON_DEFAULTS:
        assert flag in FLAGS and FLAGS[flag] == (section, name), flag


def test_weights_initialise_on_the_device_unless_asked(monkeypatch):
    from megatron_patch import device
    from megatron_patch.config import ParallelConfig

    base = ["--model", "tiny", *MOCK, "--train-iters", "10"]
    assert parse_config(base).parallel.use_cpu_initialization is None
    assert ParallelConfig().cpu_initialization() is True  # no GPU here: the CPU
    monkeypatch.setattr(device, "on_gpu", lambda: True)
    assert ParallelConfig().cpu_initialization() is False  # megatron-core's default on a GPU
    assert parse_config([*base, "--use-cpu-initialization"]).parallel.cpu_initialization() is True
