"""Packaging: `pip install .` gives the `cylindria` and `cylindria-tester` commands."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements() -> list[str]:
    """Runtime requirements from requirements.txt (comments dropped)."""
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name="cylindria",
    version="0.1.0",
    description="Authenticated REST API in front of the ComfyUI instances of a GPU render host",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Subpackages (cylindria.web.v2, ...) found, not listed: a new one cannot be left out of the install.
    packages=find_packages(include=["cylindria", "cylindria.*", "comfy", "comfy.*", "tester", "tester.*"]),
    install_requires=requirements(),
    entry_points={"console_scripts": ["cylindria=cylindria.cli:main",
                                      "cylindria-tester=tester.app:main"]},
)
