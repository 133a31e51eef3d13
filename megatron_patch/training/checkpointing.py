"""Checkpoints in Megatron's layout, written with megatron-core `dist_checkpointing` (torch_dist).

    CKPT_DIR/iter_0000020/          one checkpoint (sharded tensors + common state + config.yaml)
    CKPT_DIR/release/               a weights-only checkpoint (tools/convert_checkpoint.py --to token)
    CKPT_DIR/latest_checkpointed_iteration.txt   "20" or "release"

A checkpoint becomes visible only when complete: every rank finishes writing, then rank 0
replaces the pointer file through a temp file + rename. A crash mid-save leaves the previous
pointer (and so the previous checkpoint) in place.

Contents of a full checkpoint: model weights (`model` or `model0..`), optimizer
(`optimizer.*`, DistributedOptimizer state saved `fully_reshardable`), and in the common state
the LR scheduler, the `TrainState` (step, data position, accounting), the stage and the layout
it was saved at, plus the per-rank RNG states. Tensors carry global shapes, so a checkpoint
loads at any TP/PP/DP; RNG states are restored only at the layout they were saved at.
"""
import os
import random
import shutil
from typing import Optional

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_patch import io
from megatron_patch.compat import use_in_process_results_queue
from megatron_patch.training import rundir
from megatron_patch.training.config import RunConfig, config_from_dict, load_yaml, to_yaml

FORMAT_VERSION = 1
OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}

def checkpoint_config(path: str) -> RunConfig:
    """The resolved run config saved beside a checkpoint."""
    try:
        return config_from_dict(load_yaml(os.path.join(path, rundir.CONFIG_FILE)), launch=False)
    except ValueError as err:
        raise rundir.CheckpointError(f"checkpoint {path}: unreadable {rundir.CONFIG_FILE} ({err})") from None


def common_state(path: str) -> dict:
    """The non-tensor part of a checkpoint (train state, scheduler, stage, layout), no tensors read."""
    try:
        return dist_checkpointing.load_common_state_dict(path)
    except Exception as err:  # torch.load errors on a truncated/garbled common.pt
        raise rundir.CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err})") from None


# ----------------------------------------------------------------------------- state dicts


def _dp_rank_size():
    return (parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size())


def layout() -> dict:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
    }


def model_sharded_state_dict(chunks) -> dict:
    """{"model": ...} or {"model0": ..., "model1": ...} for virtual pipeline chunks (unwrapped)."""
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def get_rng_state() -> dict:
    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded(data) -> ShardedObject:
    lay = layout()
    offset = (
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_data_parallel_rank(),
    )
    return ShardedObject("rng_state", data, (lay["pp"], lay["tp"], lay["dp"]), offset, replica_id=0)


def _full_state_dict(chunks, optimizer, is_loading: bool, with_rng: bool) -> dict:
    sd = model_sharded_state_dict(chunks)
    if optimizer is not None:
        # The optimizer's state is keyed by the model's sharded tensors (Megatron-LM passes the
        # whole dict of model chunks too).
        sd["optimizer"] = optimizer.sharded_state_dict(
            dict(sd), is_loading=is_loading, metadata=dict(OPTIM_METADATA)
        )
    if with_rng:
        sd["rng_state"] = _rng_sharded(get_rng_state())
    return sd


# ----------------------------------------------------------------------------- save


def _barrier():
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def save_checkpoint(
    ckpt_dir: str,
    cfg: RunConfig,
    chunks,
    optimizer=None,
    scheduler=None,
    train_state=None,
    stage=None,
) -> str:
    """Save (all ranks); weights only when optimizer is None. Returns the checkpoint path."""
    weights_only = optimizer is None
    name = rundir.RELEASE if weights_only else rundir.iteration_name(train_state.step)
    path = os.path.join(ckpt_dir, name)
    if _rank0():
        if os.path.exists(path):  # a leftover of a crashed save, or re-saving the same step
            shutil.rmtree(path)
        os.makedirs(path)
    _barrier()
    sd = _full_state_dict(chunks, optimizer, is_loading=False, with_rng=not weights_only)
    sd["kind"] = "weights" if weights_only else "full"
    sd["format_version"] = FORMAT_VERSION
    if not weights_only:
        sd["scheduler"] = scheduler.state_dict()
        sd["train_state"] = train_state.to_dict()
        sd["stage"] = stage.to_dict()
        sd["layout"] = layout()
    use_in_process_results_queue()  # synchronous save: no spawned Manager (compat/)
    dist_checkpointing.save(sd, path, sharded_strategy=("torch_dist", 1))
    if _rank0():
        io.write_text(os.path.join(path, rundir.CONFIG_FILE), to_yaml(cfg))
    _barrier()
    if _rank0():  # the pointer goes last: only now is the checkpoint visible
        io.write_text(os.path.join(ckpt_dir, rundir.TRACKER),
                      rundir.tracker_text(None if weights_only else train_state.step))
    _barrier()
    return path


# ----------------------------------------------------------------------------- load


def check_model_matches(path: str, model_cfg) -> None:
    """The saved architecture must equal `model_cfg` (fields set to None are not compared).

    The saved one is config.yaml's, or for a Megatron-LM checkpoint its saved `args`."""
    args = None if os.path.isfile(os.path.join(path, rundir.CONFIG_FILE)) else megatron_lm_args(path)
    if args is not None:
        saved, source = megatron_lm_model_config(args, path), "Megatron-LM args"
    else:
        saved, source = checkpoint_config(path).model, rundir.CONFIG_FILE
    # Megatron-LM saves only the padded vocabulary; load_weights compares the table sizes.
    diff = model_differences(saved, model_cfg, skip=("vocab_size",) if args is not None else ())
    if diff:
        pretty = "; ".join(f"{k}: checkpoint {a} vs requested {b}" for k, (a, b) in diff.items())
        raise rundir.CheckpointError(
            f"checkpoint {path} was saved for a different model ({pretty}; from its {source}); "
            "use the same model config / tokenizer as the run that saved it"
        )


def _load(sd: dict, path: str) -> dict:
    try:
        return dist_checkpointing.load(sd, path)
    except rundir.CheckpointError:
        raise
    except BaseException as err:  # torch.distributed.checkpoint's CheckpointException is a BaseException
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        reason = lines[-1] if lines else ""
        raise rundir.CheckpointError(
            f"failed to read checkpoint {path} ({type(err).__name__}: {reason[:300]}); it is "
            "corrupted, incomplete, or does not fit this model"
        ) from err


def _set_model(chunks, loaded: dict) -> None:
    for i, chunk in enumerate(chunks):
        key = "model" if len(chunks) == 1 else f"model{i}"
        chunk.load_state_dict(loaded[key], strict=True)


def load_weights(path: str, chunks, model_cfg) -> None:
    """Model weights only from any checkpoint (full or release, or a Megatron-LM torch_dist
    checkpoint of the same architecture) into unwrapped chunks."""
    if os.path.isfile(os.path.join(path, rundir.CONFIG_FILE)) or megatron_lm_args(path) is None:
        rundir.check_complete(path)
    else:
        _check_shards(path)
    check_model_matches(path, model_cfg)
    sd = model_sharded_state_dict(chunks)
    _fit_to_saved(sd, path)
    _set_model(chunks, _load(sd, path))


def load_full(path: str, chunks, optimizer, scheduler, load_optim: bool = True,
              load_rng: bool = True) -> dict:
    """Restore model, optimizer, scheduler and (at the same layout) RNG; returns the common state.

    load_optim=False keeps the fresh optimizer (--no-load-optim); load_rng=False keeps the
    seeded RNG (--no-load-rng)."""
    rundir.check_complete(path)
    common = common_state(path)
    if common.get("kind") != "full":
        raise rundir.CheckpointError(
            f"{path} is a weights-only checkpoint: start a stage from it with --init-from, "
            "it cannot be resumed"
        )
    with_rng = load_rng and common.get("layout") == layout()
    sd = _full_state_dict(chunks, optimizer if load_optim else None, is_loading=True, with_rng=with_rng)
    loaded = _load(sd, path)
    _set_model(chunks, loaded)
    if load_optim:
        optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(common["scheduler"])
    if with_rng:
        set_rng_state(loaded["rng_state"])
    return common


def load_optimizer_state(path: str, chunks, optimizer) -> dict:
    """Model and optimizer state of a full checkpoint, and nothing else: the start of a stage that
    carries the previous stage's optimizer (--handover-optimizer carry). Returns the common state.

    Every stage has the same parameters and checkpoint keys, so Adam's moments and step counts
    (and with bf16 the fp32 main weights) load as they were saved. The parameter groups keep
    this stage's hyperparameters (learning rates, weight decay: the checkpoint's would be the
    previous stage's), and the scheduler, step and RNG are left as the caller made them."""
    rundir.check_complete(path)
    common = common_state(path)
    if common.get("kind") != "full":
        raise rundir.CheckpointError(
            f"--handover-optimizer carry needs the previous stage's full checkpoint (with its optimizer "
            f"state), but {path} holds weights only: start from the stage's checkpoint directory "
            "(e.g. SAVE/patch) instead of its _weights copy, or use --handover-optimizer reset"
        )
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    loaded = _load(_full_state_dict(chunks, optimizer, is_loading=True, with_rng=False), path)
    _set_model(chunks, loaded)
    optimizer.load_state_dict(loaded["optimizer"])
    for group, own in zip(optimizer.param_groups, hyper):
        group.update(own)
    return common


# ----------------------------------------------------------------------------- architecture and Megatron-LM checkpoints

_ARCH_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "vocab_size", "tie_embeddings", "rotary_base", "norm_epsilon")


def model_differences(saved, requested, skip=()) -> dict:
    """{field: (saved, requested)} of the architecture fields that differ (None requested = any)."""
    def value(m, f):
        return (m.num_query_groups or m.num_attention_heads) if f == "num_query_groups" else getattr(m, f)

    return {f: (value(saved, f), value(requested, f)) for f in _ARCH_FIELDS
            if f not in skip and value(requested, f) is not None and value(saved, f) != value(requested, f)}


def megatron_lm_args(path: str):
    """The `args` Namespace a Megatron-LM checkpoint keeps in its common state, None if there is
    none. Megatron-LM's GPT checkpoints (torch_dist) have no config.yaml; their args describe
    the model (megatron-core registers argparse.Namespace as safe to unpickle)."""
    common = os.path.join(path, "common.pt")
    if not os.path.isfile(common):
        return None
    try:
        state = torch.load(common, map_location="cpu")
    except Exception as err:
        raise rundir.CheckpointError(f"checkpoint {path}: common.pt is unreadable ({type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0][:300] if str(err).strip() else ''})") from None
    args = state.get("args") if isinstance(state, dict) else None
    return args if args is not None and hasattr(args, "num_layers") else None


def megatron_lm_model_config(args, path: str = "the checkpoint"):
    """The ModelConfig a Megatron-LM GPT checkpoint's args describe; CheckpointError lists every
    feature this product's model (LLaMA-style: RMSNorm, SwiGLU, plain RoPE, no biases) lacks."""
    from megatron_patch.config import ModelConfig

    def a(name, default=None):
        return getattr(args, name, default)

    checks = (
        (a("position_embedding_type", "rope") == "rope", f"position_embedding_type={a('position_embedding_type')!r}"),
        (a("swiglu", False) and not a("squared_relu") and not a("quick_geglu"), "an MLP other than SwiGLU (--swiglu)"),
        (a("normalization", "LayerNorm") == "RMSNorm", f"normalization={a('normalization')!r}"),
        (not a("apply_layernorm_1p"), "apply_layernorm_1p"),
        (not a("add_bias_linear") and not a("add_qkv_bias"), "linear biases (add_bias_linear / add_qkv_bias)"),
        (not a("qk_layernorm"), "qk_layernorm"),
        (not a("num_experts"), "mixture of experts (num_experts)"),
        (not a("multi_latent_attention"), "multi-latent attention"),
        (a("rotary_percent", 1.0) == 1.0, f"partial rotary embedding (rotary_percent={a('rotary_percent')})"),
        (not a("rotary_interleaved"), "interleaved RoPE"),
        (not a("use_rope_scaling"), "RoPE scaling (use_rope_scaling)"),
        (not a("rotary_seq_len_interpolation_factor"), "RoPE sequence-length interpolation"),
        (not a("mtp_num_layers"), "multi-token-prediction layers"),
        (a("heterogeneous_layers_config_path") is None, "heterogeneous layers"),
        (a("hybrid_layer_pattern") is None and a("hybrid_override_pattern") is None, "hybrid (Mamba) layers"),
        (a("window_size") is None, "sliding-window attention"),
        (a("kv_channels") in (None, a("hidden_size", 0) // max(a("num_attention_heads", 1) or 1, 1)),
         f"kv_channels={a('kv_channels')} other than hidden_size / num_attention_heads"),
    )
    problems = [why for ok, why in checks if not ok]
    missing = [n for n in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                           "padded_vocab_size") if not isinstance(a(n), int)]
    if missing:
        problems.append(f"args lack {missing}")
    if problems:
        raise rundir.CheckpointError(f"Megatron-LM checkpoint {path} has features this model does not support: "
                              + "; ".join(problems))
    gqa = bool(a("group_query_attention")) and a("num_query_groups") not in (None, a("num_attention_heads"))
    fields = dict(
        num_layers=a("num_layers"), hidden_size=a("hidden_size"), ffn_hidden_size=a("ffn_hidden_size"),
        num_attention_heads=a("num_attention_heads"), num_query_groups=a("num_query_groups") if gqa else None,
        vocab_size=a("padded_vocab_size"), make_vocab_size_divisible_by=1,
        max_position_embeddings=a("max_position_embeddings"), rotary_base=a("rotary_base", 10000),
        norm_epsilon=a("norm_epsilon", 1e-5), tie_embeddings=not a("untie_embeddings_and_output_weights", False),
        init_method_std=a("init_method_std", 0.02),
    )
    import dataclasses

    if "group_query_attention" in {f.name for f in dataclasses.fields(ModelConfig)}:
        fields["group_query_attention"] = gqa
    try:
        return ModelConfig(**fields)
    except ValueError as err:
        raise rundir.CheckpointError(f"Megatron-LM checkpoint {path}: its args are not a valid model ({err})") from None


def _check_shards(path: str) -> None:
    """A Megatron-LM checkpoint (no config.yaml) must still hold a whole torch_dist save."""
    missing = [n for n in ("metadata.json", "common.pt", ".metadata") if not os.path.isfile(os.path.join(path, n))]
    if missing or not any(n.endswith(".distcp") for n in os.listdir(path)):
        raise rundir.CheckpointError(f"checkpoint {path} is incomplete or corrupted: missing {missing or 'tensor shards'}")


def _fit_to_saved(sd: dict, path: str) -> None:
    """Match the requested tensors to the saved ones by name and global shape, with errors that
    say what differs. Norm weights are found under either layout: megatron-core's local spec
    saves `input_layernorm` / `pre_mlp_layernorm` under Transformer Engine's names
    (`linear_qkv.layer_norm_weight`, `linear_fc1.layer_norm_weight`, its
    sharded_state_dict_keys_map), so local, sdpa and TE models share one layout; a checkpoint
    written without that map keeps the local names, and those are used instead."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    from megatron_patch.export.hf_keys import TE_NORM_NAMES

    try:
        saved = dist_checkpointing.load_tensors_metadata(path)
    except Exception as err:
        raise rundir.CheckpointError(f"checkpoint {path}: unreadable tensor metadata ({type(err).__name__}: "
                              f"{str(err)[:300]}); it is corrupted or incomplete") from None
    other = {**{f"decoder.layers.{v}": f"decoder.layers.{k}" for k, v in TE_NORM_NAMES.items()},
             **{f"decoder.layers.{k}": f"decoder.layers.{v}" for k, v in TE_NORM_NAMES.items()}}
    problems = []
    for t in nested_values(sd):
        if not isinstance(t, (ShardedTensor, ShardedTensorFactory)):
            continue
        if t.key not in saved and other.get(t.key) in saved:
            t.key = other[t.key]
        if t.key not in saved:
            problems.append(f"no tensor {t.key!r}")
        elif isinstance(t, ShardedTensor) and tuple(saved[t.key].global_shape) != tuple(t.global_shape):
            have, want = tuple(saved[t.key].global_shape), tuple(t.global_shape)
            hint = ""
            if t.key in ("embedding.word_embeddings.weight", "output_layer.weight"):
                hint = (" (vocabulary rows: the model pads vocab_size to a multiple of "
                        "make_vocab_size_divisible_by x TP; make both agree, e.g. "
                        "--make-vocab-size-divisible-by as in the checkpoint's config, and use its tokenizer)")
            problems.append(f"{t.key}: checkpoint {have} vs model {want}{hint}")
    if problems:
        raise rundir.CheckpointError(f"checkpoint {path} does not fit this model: " + "; ".join(problems[:6])
                              + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else ""))
