"""Installs the `maskrcnn` package.

    pip install -r requirements.txt
    pip install --no-build-isolation -e ".[dev]"

The native ROIAlign / NMS extension is added by the native-ops work (see docs/native.md once it exists).
"""
from setuptools import find_packages, setup

setup(
    name="maskrcnn",
    version="0.1.0",
    description="A from-scratch, pure-PyTorch Mask R-CNN for fashion instance segmentation",
    packages=find_packages(include=["maskrcnn", "maskrcnn.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "numpy", "pillow", "pycocotools", "pyyaml"],
    extras_require={"dev": ["pytest"]},
    package_data={"maskrcnn": ["ops/csrc/**/*"]},
)
