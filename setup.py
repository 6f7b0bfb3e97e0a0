from setuptools import find_packages, setup

setup(
    name="pangu-pro",
    version="0.1.0",
    description="PanGu-pi Pro for MindSpore: tiny language models, compact tokenizers, "
    "parameter inheritance and multi-round pretraining",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9,<3.12",
    packages=find_packages(include=["pangu_pro", "pangu_pro.*"]),
    package_data={"pangu_pro": ["convert/hf_modeling/*.py", "model/kernels/*.cc"]},
    install_requires=[
        "mindspore==2.9.0",
        "mindformers==1.9.0",
        "numpy<2",
        "sentencepiece",
        "pyyaml",
        "tqdm",
        "safetensors",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "rouge-score"],
        "hf": ["torch==2.13.0", "transformers==4.57.1"],
        # EleutherAI's harness as a client of exports (docs/eval.md); 0.4.13 keeps the torch, transformers,
        # numpy<2 and datasets pins above as they are
        "lmeval": ["lm-eval[hf]==0.4.13"],
    },
    entry_points={"console_scripts": ["pangu-pro=pangu_pro.cli:main"]},
)
