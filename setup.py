"""Installs coopnet-tf: `pip install -e .` (add `[test]` for the test tools)."""
import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
REQUIREMENTS = [
    line.strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="coopnet-tf",
    version="0.1.0",
    description=(
        "CoopNet (Hariat, Manzanera, Filliat, WACV 2023): self-supervised co-training "
        "of depth, pose and optical flow, in TensorFlow 2 / Keras 3."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["coopnet_tf", "coopnet_tf.*"]),
    python_requires=">=3.11",
    install_requires=REQUIREMENTS,
    extras_require={"test": ["pytest==9.0.3", "pytest-xdist==3.8.0"]},
)
