"""nnunet-mamba: Mamba / visual-state-space segmentation networks for nnU-Net v2."""
from pathlib import Path

from setuptools import find_packages, setup

README = Path(__file__).with_name("README.md")

setup(
    name="nnunet-mamba",
    version="0.1.0",
    description="Mamba / VSS segmentation networks (VM-UNet, DSVM-UNet, ...) as nnU-Net v2 trainers",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunet_mamba", "nnunet_mamba.*"]) + ["nnunet_mamba_trainers",
                                                                          "nnunet_mamba_planners"],
    # nnU-Net imports every module of an nnUNet_extTrainer folder as a top-level module; the trainers are
    # installed as their own folder so that `nnunet-mamba env` can point nnUNet_extTrainer at it.
    # The planners (run by `nnunet-mamba plan`) are installed the same way.
    package_dir={"nnunet_mamba_trainers": "trainers", "nnunet_mamba_planners": "planners"},
    install_requires=[
        "torch>=2.4",  # torch.is_autocast_enabled(device_type), get_autocast_dtype
        "nnunetv2>=2.8.1,<2.9",
        "numpy",
        "monai>=1.4,<1.7",
        "SimpleITK",
        "pillow",
        "matplotlib",
        "tqdm",
        "numba>=0.60",  # the compiled CPU selective scan (nnunet_mamba.ops.scan_numba); optional at run time
    ],
    extras_require={
        # compile CUDA kernels at install time; needs a CUDA toolkit and a CUDA build of torch
        "cuda": ["mamba-ssm>=2.2,<2.4", "causal-conv1d>=1.4"],
        "test": ["pytest>=7", "mambapy==1.2.0"],
        "benchmark": ["mambapy==1.2.0"],
        # the papers' own complexity counters, to reproduce their published figures
        "paper-counts": ["thop==0.1.1.post2209072238", "fvcore==0.1.5.post20221221"],
    },
    entry_points={"console_scripts": ["nnunet-mamba=nnunet_mamba.cli:main"]},
)
