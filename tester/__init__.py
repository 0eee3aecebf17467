"""Cylindria Tester: a small Tk desktop tool for poking a Cylindria server by hand."""

__all__ = ["__version__"]
__version__ = "0.1.0"
