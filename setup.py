from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="lgiformer",
    version="0.1.0",
    description="MAE-DFER: self-supervised video pretraining (LGI-Former) for dynamic facial expression "
    "recognition and facial action unit detection",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["lgiformer", "lgiformer.*", "data_lists"]),
    package_data={"lgiformer.data": ["datasets.yaml"]},
    # torch is not pinned here: GPU users keep their CUDA build. scripts/install.sh pins the CPU build on
    # machines without a GPU (see constraints.txt).
    install_requires=[
        "torch>=2.1",
        "timm>=1.0",
        "einops>=0.7",
        "numpy",
        "safetensors>=0.4",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "pillow",
        "av>=11",
        "deepspeed>=0.14",
        "matplotlib",
    ],
    extras_require={
        "decord": ["decord>=0.6"],
        "hf": ["transformers>=4.40"],
        # face crops of raw footage: the 4.x wheels ship the Haar cascades (5.x moved them to contrib)
        "faces": ["opencv-python-headless>=4.5,<5"],
        # lgiformer.export: the torch.export-based ONNX exporter needs onnxscript; the check runs ONNX Runtime
        "export": ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18"],
        "test": ["pytest>=7", "pytest-timeout>=2.1", "decord>=0.6", "transformers>=4.40",
                 "opencv-python-headless>=4.5,<5", "onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18",
                 "scikit-image>=0.22"],   # scikit-image: the photograph of a face in the face-crop tests
    },
    entry_points={
        "console_scripts": [
            "lgiformer-convert=lgiformer.convert:main",
            "lgiformer-export=lgiformer.export:main",
            "lgiformer-extract=lgiformer.extract:main",
            "lgiformer-predict=lgiformer.predict:main",
            "lgiformer-release=lgiformer.release:main",
        ]
    },
)
