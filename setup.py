"""Install megatron-patch: `pip install -e .` (builds the C++ sample-index extension).

The extension is compiled here, at install time, never at run time on rank 0.
GPU: the environment is NVIDIA's PyTorch container (nvcr.io/nvidia/pytorch), which ships
Transformer Engine, flash-attn and NVIDIA Apex built for its CUDA; `pip install -e .` there is
enough. `pip install -e .[gpu]` adds Transformer Engine and flash-attn from PyPI for other
environments (NVIDIA Apex is not on PyPI: the PyPI package named `apex` is an unrelated project;
build Apex from github.com/NVIDIA/apex if you need it). The CPU path never needs any of them.
Every tool is also a console script: `megatron-patch-pretrain` = `python tools/pretrain.py`, ...
"""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

# Every module of megatron_patch/cli/ is a command (tools/<name>.py runs the same main).
CLIS = (
    "pretrain", "convert_checkpoint", "evaluate", "preprocess_data", "train_tokenizer",
    "fetch_corpus", "study", "neuron_activation", "demo_report", "run_status", "gpu_check",
    "bench_model", "bench_spec", "bench_data", "bench_all", "bench_tokenizers",
)

ext_modules = [
    Pybind11Extension(
        "megatron_patch.data._sample_index",
        ["csrc/sample_index.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
]

setup(
    name="megatron-patch",
    version="0.1.0",
    description="Patch-level training (Shao et al., 2024) on megatron-core",
    packages=find_packages(include=["megatron_patch", "megatron_patch.*"]),
    python_requires=">=3.10",
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    install_requires=[
        # 2.6: torch.load defaults to weights_only=True (checkpoint metadata is unpickled).
        "torch>=2.6",
        "megatron-core==0.16.1",
        "numpy",
        "psutil",
        "pyyaml",
        "sentencepiece",
        "tqdm",
    ],
    extras_require={
        "gpu": ["transformer-engine[pytorch]", "flash-attn"],
        "hf": ["transformers", "safetensors", "tokenizers", "protobuf"],
        "dashboards": ["tensorboard", "wandb"],
        "dev": ["pytest", "pybind11>=2.12"],
    },
    entry_points={"console_scripts": [
        f"megatron-patch-{name.replace('_', '-')} = megatron_patch.cli.{name}:main" for name in CLIS
    ]},
    zip_safe=False,
)
