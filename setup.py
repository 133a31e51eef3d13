"""Install megatron-patch: `pip install -e .` (builds the C++ sample-index extension).

The extension is compiled here, at install time, never at run time on rank 0.
GPU extras (Transformer Engine, flash-attn, apex) are optional: `pip install -e .[gpu]`
inside an NVIDIA PyTorch container; the CPU path never needs them.
"""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

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
        "torch>=2.4",
        "megatron-core==0.16.1",
        "numpy",
        "psutil",
        "pyyaml",
        "sentencepiece",
        "tqdm",
    ],
    extras_require={
        "gpu": ["transformer-engine[pytorch]", "flash-attn", "apex"],
        "hf": ["transformers", "safetensors"],
        "dev": ["pytest", "pybind11>=2.12"],
    },
    zip_safe=False,
)
