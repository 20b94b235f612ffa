"""spot-fast: Surgical Post-Training with fused LM-head kernels.

Installs two import packages from one distribution:
- ``spot_kernels``: trainer-free Triton / PyTorch kernels; needs torch + triton.
- ``spot_fast`` (folder ``spot_fast/``): the trainer, data pipeline and evaluation.
"""
from setuptools import setup

setup(
    name="spot-fast",
    version="0.1.0",
    description="Surgical Post-Training (SPoT) with fused LM-head log-prob kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["spot_kernels", "spot_fast", "spot_fast.rectify", "spot_fast.sampling", "spot_fast.forgetting",
              "spot_fast.evaluate"],
    package_data={"spot_fast": ["assets/*", "assets/**/*"]},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0",
        "transformers>=4.51",
        "deepspeed>=0.16",
        "ninja",
        "numpy",
        "pyyaml",
        "tqdm",
        "safetensors",
        "matplotlib",
        "rapidfuzz",
        "math-verify",
        "wandb",
        "peft",
        "bitsandbytes",
    ],
    extras_require={
        "gpu": ["liger-kernel>=0.5"],
        "test": ["pytest", "pytest-timeout", "liger-kernel>=0.5"],
    },
    entry_points={"console_scripts": ["spot-fast-rectify = spot_fast.rectify.__main__:main",
                                      "spot-fast-eval = spot_fast.evaluate.__main__:main"]},
)
