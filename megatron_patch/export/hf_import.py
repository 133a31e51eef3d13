"""Import a Hugging Face `LlamaForCausalLM` directory as a weights-only checkpoint of this product.

    python tools/convert_checkpoint.py --from hf --load llama-dir --save ckpt/llama
    # then: tools/pretrain.py --config ckpt/llama/release/config.yaml --init-from ckpt/llama ...

The source directory holds config.json and safetensors weights (`model.safetensors`, or shards
listed in `model.safetensors.index.json`). The output is an ordinary release checkpoint
(DST/release/ + pointer "release", written by `megatron_patch.checkpoint.store`) whose
config.yaml carries the model shape, so `--init-from`, tools/evaluate.py and `--to hf` take it
as they take any other. The tensor correspondence is `export/hf_keys.py`, shared with the export.

Choices:
- Vocabulary: `make_vocab_size_divisible_by` is 1, so the tables keep exactly the HF rows and
  the model's softmax equals HF's (no padding logits). A run that starts from the import must
  use the same padding (its config.yaml has it; a different one is a clear load error).
- dtype: tensors are kept as stored (bf16 stays bf16; fp16, which the trainer does not use, is
  widened to fp32 losslessly); config.yaml's train.bf16 says which.
- Tokenizer: the tokenizer files of the source (tokenizer.model, tokenizer.json, ...) are copied
  to DST/tokenizer/, and config.yaml's data.tokenizer_model points at DST/tokenizer/tokenizer.model
  when there is one. A copy, not a reference: a source directory is often a download cache that
  moves or is pruned, the files are small, and the checkpoint then carries everything that
  evaluation, continued training and a later `--to hf` export need.
- What the product's model cannot represent is refused with the reason (`UnsupportedModel`):
  other architectures, biases, RoPE scaling or partial rotary, a non-SiLU activation, a
  head_dim other than hidden_size / heads, quantised weights.

Peak memory is the model plus one tensor: weights are read one at a time from the safetensors
files and copied into a TP1/PP1 model, which dist_checkpointing then saves.
"""
import dataclasses
import json
import os
import shutil
from typing import Dict

import torch
import yaml

from megatron_patch import io
from megatron_patch.checkpoint import layout, store
from megatron_patch.checkpoint.architecture import model_differences
from megatron_patch.export import hf_keys

TOKENIZER_DIR = "tokenizer"
# Files of a HF tokenizer, copied with the weights.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "generation_config.json")
# LlamaConfig's defaults for keys a config.json may leave out.
_HF_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
                "max_position_embeddings": 2048, "initializer_range": 0.02}


class UnsupportedModel(ValueError):
    """The Hugging Face model has a feature this product's model cannot represent."""


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"--load {hf_dir} does not exist (pass a Hugging Face model directory)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{hf_dir} has no config.json: not a Hugging Face model directory")
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as err:
        raise UnsupportedModel(f"{path} is not valid JSON ({err})") from None


def _rope(config: dict):
    """(rope_theta, problems) from transformers 4.x (`rope_theta`, `rope_scaling`) or 5.x
    (`rope_parameters`) config keys."""
    problems = []
    params = config.get("rope_parameters") or {}
    if params and not isinstance(params, dict):
        problems.append("per-layer-type rope_parameters")
        params = {}
    scaling = config.get("rope_scaling")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if scaling or rope_type != "default":
        problems.append(f"RoPE scaling ({scaling or rope_type!r}); only plain RoPE is supported")
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        problems.append(f"partial rotary embedding (partial_rotary_factor={partial})")
    theta = params.get("rope_theta", config.get("rope_theta", _HF_DEFAULTS["rope_theta"]))
    return float(theta), problems


def model_config_from_hf(config: dict):
    """The ModelConfig of a LlamaForCausalLM config.json; UnsupportedModel lists what does not fit."""
    from megatron_patch.config import ModelConfig

    problems = []
    arch = config.get("architectures") or []
    if config.get("model_type") != "llama" or arch not in ([], ["LlamaForCausalLM"]):
        problems.append(f"model_type={config.get('model_type')!r}, architectures={arch}: only "
                        "LlamaForCausalLM (model_type 'llama') is supported")
    act = config.get("hidden_act", config.get("hidden_activation", "silu"))
    if act != "silu":
        problems.append(f"hidden_act={act!r} (the MLP here is SwiGLU: silu)")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            problems.append(f"{key}=true (the layers here have no biases)")
    if config.get("quantization_config"):
        problems.append("quantised weights (quantization_config); import the unquantised model")
    theta, rope_problems = _rope(config)
    problems += rope_problems
    need = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
    missing = [k for k in need if not isinstance(config.get(k), int)]
    if missing:
        problems.append(f"config.json lacks (integer) {missing}")
    if problems:
        raise UnsupportedModel("cannot import this Hugging Face model:\n  - " + "\n  - ".join(problems))
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim * heads != config["hidden_size"]:
        raise UnsupportedModel(f"cannot import: head_dim={head_dim} x {heads} heads != hidden_size="
                               f"{config['hidden_size']} (heads here are hidden_size / num_attention_heads wide)")
    c = dict(_HF_DEFAULTS, **{k: v for k, v in config.items() if v is not None})
    fields = {f: c[hf] for f, hf in hf_keys.CONFIG_FIELDS if hf in c}
    groups = config.get("num_key_value_heads") or heads
    fields["num_query_groups"] = None if groups == heads else groups
    fields["rotary_base"] = theta
    fields["tie_embeddings"] = bool(fields["tie_embeddings"])
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if "group_query_attention" in known:
        fields["group_query_attention"] = groups != heads
    try:
        return ModelConfig(**fields, make_vocab_size_divisible_by=1)
    except ValueError as err:
        raise UnsupportedModel(f"cannot import: {err}") from None


class _SafetensorsReader:
    """HF tensors by name across one or several safetensors files, read one at a time."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        index = os.path.join(hf_dir, "model.safetensors.index.json")
        single = os.path.join(hf_dir, "model.safetensors")
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.isfile(single):
            files = ["model.safetensors"]
        else:
            other = [n for n in os.listdir(hf_dir) if n.endswith((".bin", ".pt", ".pth"))]
            hint = (f" (it has {other}: load and re-save the model with "
                    "save_pretrained(..., safe_serialization=True))") if other else ""
            raise FileNotFoundError(f"{hf_dir} has no model.safetensors or model.safetensors.index.json{hint}")
        self.where: Dict[str, object] = {}
        self._handles = []
        for name in files:
            path = os.path.join(hf_dir, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}, named by the safetensors index, does not exist")
            h = safe_open(path, framework="pt")
            self._handles.append(h)
            for key in h.keys():
                self.where[key] = h
        self.used = set()

    def get(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise hf_keys.MappingError(f"the safetensors files have no tensor {name!r}")
        self.used.add(name)
        return self.where[name].get_tensor(name)

    def unused(self):
        return sorted(k for k in self.where
                      if k not in self.used and not k.endswith(hf_keys.HF_IGNORED_SUFFIXES))

    def dtype(self) -> torch.dtype:
        dtypes = {h.get_slice(k).get_dtype() for k, h in self.where.items()}
        return torch.bfloat16 if dtypes == {"BF16"} else torch.float32


def _copy_tokenizer(hf_dir: str, dst: str) -> list:
    names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, n))]
    if names:
        os.makedirs(dst)
        for n in names:
            shutil.copyfile(os.path.join(hf_dir, n), os.path.join(dst, n))  # follows hub-cache symlinks
    return names


def import_hf(hf_dir: str, dst: str, expect=None) -> str:
    """Write DST as a weights-only checkpoint of the HF model in `hf_dir`; returns DST/release.

    expect: a ModelConfig the import must match (CheckpointError-style ValueError otherwise).
    Needs a world-of-one megatron-core process group. DST appears only when complete."""
    from megatron_patch.config import ParallelConfig
    from megatron_patch.model import build_model

    model_cfg = model_config_from_hf(read_hf_config(hf_dir))
    if expect is not None:
        _check_expected(model_cfg, expect)
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise FileExistsError(f"--save {dst} already exists and is not empty; remove it or pick another")
    reader = _SafetensorsReader(hf_dir)
    dtype = reader.dtype()

    # megatron-core's plain local spec: the parameters every spec shares, no optional kernels.
    model = build_model(dataclasses.replace(model_cfg, transformer_impl="local"), ParallelConfig(),
                        params_dtype=dtype)
    params = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    rows = model_cfg.padded_vocab_size(1)
    with torch.no_grad():
        for name, t in hf_keys.from_hf(reader.get, model_cfg, rows):
            params.pop(name).copy_(t)
    left = reader.unused()
    if left:
        raise UnsupportedModel(f"cannot import: tensors with no counterpart in this model: {left[:8]}"
                               + (f" (+{len(left) - 8} more)" if len(left) > 8 else ""))
    if model_cfg.tie_embeddings:
        params.pop(hf_keys.OUTPUT[0], None)
    assert not params, f"parameters the mapping does not fill: {sorted(params)}"

    final = os.path.abspath(dst)
    with io.atomic_dir(final) as tmp:
        copied = _copy_tokenizer(hf_dir, os.path.join(tmp, TOKENIZER_DIR))
        if "tokenizer.model" in copied:  # sentencepiece: what the export ships again
            data = {"tokenizer_model": os.path.join(final, TOKENIZER_DIR, "tokenizer.model")}
        elif "tokenizer.json" in copied:
            data = {"tokenizer_model": os.path.join(final, TOKENIZER_DIR)}
        else:
            data = {"tokenizer_type": "NullTokenizer", "vocab_size": model_cfg.vocab_size}
        store.save_weights(tmp, [model], run_config_yaml(model_cfg, dtype == torch.bfloat16, data))
    return os.path.join(final, layout.RELEASE)


def run_config_yaml(model_cfg, bf16: bool, data: dict) -> str:
    """config.yaml of an import, in the sections of a run config (training/config.py reads it).

    An import belongs to no run: it has the model, the dtype and the tokenizer, no data or
    budget, so it can serve as a run's --config (the run adds --data-path and a budget); every
    other field is the run config's default."""
    model = {"preset": None, **dataclasses.asdict(model_cfg)}
    return yaml.safe_dump({"model": model, "train": {"bf16": bf16}, "data": data}, sort_keys=False)


def _check_expected(model_cfg, expect) -> None:
    diff = model_differences(model_cfg, expect)
    if diff:
        raise ValueError("the Hugging Face model differs from --config: " + "; ".join(
            f"{k}: HF model {a} vs --config {b}" for k, (a, b) in diff.items()))
