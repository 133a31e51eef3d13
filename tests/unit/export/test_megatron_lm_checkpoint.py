"""Megatron-LM torch_dist GPT checkpoints (no config.yaml; the shape is in the saved `args`) load
into this product's model with identical logits: the Transformer Engine key layout (norms as
`linear_qkv.layer_norm_weight` / `linear_fc1.layer_norm_weight`, TE `_extra_state` objects), and
a layout that keeps megatron-core's local norm names.

    pytest -q tests/unit/export/test_megatron_lm_checkpoint.py
"""
import argparse
import copy
import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

from megatron_patch.config import ModelConfig, ParallelConfig
from megatron_patch.model import build_model
from megatron_patch.training import checkpointing as ckpt
from megatron_patch.training import rundir
from tests._inproc import world_of_one

L, H, FFN, HEADS, ROWS, SEQ = 2, 64, 176, 4, 512, 16


def mlm_args(groups, tie, **over):
    """The model part of Megatron-LM's args, as its checkpoints keep them."""
    args = dict(
        num_layers=L, hidden_size=H, ffn_hidden_size=FFN, num_attention_heads=HEADS, kv_channels=H // HEADS,
        group_query_attention=groups is not None, num_query_groups=groups or 1, padded_vocab_size=ROWS,
        make_vocab_size_divisible_by=128, untie_embeddings_and_output_weights=not tie, rotary_base=500000,
        norm_epsilon=1e-6, normalization="RMSNorm", swiglu=True, squared_relu=False, quick_geglu=False,
        add_bias_linear=False, add_qkv_bias=False, position_embedding_type="rope", rotary_percent=1.0,
        rotary_interleaved=False, use_rope_scaling=False, rotary_seq_len_interpolation_factor=None,
        qk_layernorm=False, num_experts=None, multi_latent_attention=False, apply_layernorm_1p=False,
        max_position_embeddings=256, seq_length=SEQ, init_method_std=0.02, ckpt_format="torch_dist",
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1, params_dtype=torch.float32,
    )
    args.update(over)
    return argparse.Namespace(**args)


def source_model(groups, tie, te_names=True):
    """A megatron-core GPTModel built from megatron-core's own TE-free spec (not ours)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = TransformerConfig(
        num_layers=L, hidden_size=H, ffn_hidden_size=FFN, num_attention_heads=HEADS, num_query_groups=groups,
        kv_channels=H // HEADS, normalization="RMSNorm", layernorm_epsilon=1e-6, gated_linear_unit=True,
        activation_func=F.silu, add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0,
        use_cpu_initialization=True, bias_activation_fusion=False, bias_dropout_fusion=False,
        masked_softmax_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )
    spec = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    if not te_names:  # a checkpoint that keeps the local norm names on disk
        spec.submodules.sharded_state_dict_keys_map = {}
    model = GPTModel(config, spec, vocab_size=ROWS, max_sequence_length=256, position_embedding_type="rope",
                     rotary_base=500000, share_embeddings_and_output_weights=tie).eval()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g) if p.dim() == 1 else 0.1 * torch.randn(p.shape, generator=g))
    return model


def save_megatron_lm(model, directory, args, te_extra_state=True, iteration=10):
    """What Megatron-LM's save_checkpoint writes for torch_dist: iter_XXXXXXX/ holding the model's
    sharded state dict under "model" and args, version and iteration in the common state, then
    latest_checkpointed_iteration.txt."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    sd = model.sharded_state_dict()
    if te_extra_state:  # TE modules carry one extra-state object per layer (fp8 metadata)
        for i in range(L):
            for m in ("self_attention.linear_qkv", "mlp.linear_fc1", "self_attention.core_attention"):
                sd[f"decoder.layers.{i}.{m}._extra_state_te"] = ShardedObject(
                    f"decoder.layers.{m}._extra_state_te", None, (L,), (i,), replica_id=0)
    path = os.path.join(directory, f"iter_{iteration:07d}")
    os.makedirs(path)
    state = {"model": sd, "args": args, "checkpoint_version": 3.0, "iteration": iteration,
             "num_floating_point_operations_so_far": 0}
    dist_checkpointing.save(state, path, sharded_strategy=("torch_dist", 1))
    with open(os.path.join(directory, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(str(iteration))
    return path


def ours(groups, tie, vocab=400, **over):
    return ModelConfig(num_layers=L, hidden_size=H, ffn_hidden_size=FFN, num_attention_heads=HEADS,
                       num_query_groups=groups, group_query_attention=groups is not None, vocab_size=vocab,
                       tie_embeddings=tie, rotary_base=500000.0, norm_epsilon=1e-6, transformer_impl="sdpa",
                       **over)


def logits(model, ids):
    with torch.no_grad():
        return model(ids, torch.arange(ids.shape[1]).expand_as(ids), None)


@pytest.mark.parametrize("layout,groups,tie", [("te", 2, False), ("te", None, True), ("local-names", 2, True)])
def test_loads_with_identical_logits(tmp_path, layout, groups, tie):
    ids = torch.randint(0, 400, (2, SEQ), generator=torch.Generator().manual_seed(5))
    with world_of_one():
        src = source_model(groups, tie, te_names=layout == "te")
        save_megatron_lm(src, str(tmp_path), mlm_args(groups, tie), te_extra_state=layout == "te")
        want = logits(src, ids)
        path = os.path.join(tmp_path, "iter_0000010")
        cfg = ours(groups, tie)
        model = build_model(cfg, ParallelConfig()).eval()
        ckpt.load_weights(path, [model], cfg)
        got = logits(model, ids)
    diff = (got - want).abs().max().item()
    print(f"max |logit diff| {layout} groups={groups} tie={tie}: {diff:.2e}")
    assert diff < 1e-5


def test_mismatch_and_unsupported_are_clear(tmp_path):
    with world_of_one():
        save_megatron_lm(source_model(2, False), str(tmp_path / "a"), mlm_args(2, False))
        path = str(tmp_path / "a" / "iter_0000010")
        model = build_model(ours(2, False), ParallelConfig())
        with pytest.raises(rundir.CheckpointError, match=r"hidden_size: checkpoint 64 vs requested 128.*Megatron-LM args"):
            ckpt.load_weights(path, [model], dataclasses.replace(ours(2, False), hidden_size=128))
        with pytest.raises(rundir.CheckpointError, match="rotary_base: checkpoint 500000 vs requested 10000"):
            ckpt.load_weights(path, [model], dataclasses.replace(ours(2, False), rotary_base=10000.0))
        big = build_model(ours(2, False, vocab=1000), ParallelConfig())
        with pytest.raises(rundir.CheckpointError, match=r"embedding.word_embeddings.weight: checkpoint \(512, 64\) vs model \(1024, 64\)"):
            ckpt.load_weights(path, [big], ours(2, False, vocab=1000))
        save_megatron_lm(source_model(2, False), str(tmp_path / "b"),
                         mlm_args(2, False, swiglu=False, add_bias_linear=True, use_rope_scaling=True))
        with pytest.raises(rundir.CheckpointError, match="SwiGLU.*biases.*RoPE scaling"):
            ckpt.load_weights(str(tmp_path / "b" / "iter_0000010"), [model], ours(2, False))

