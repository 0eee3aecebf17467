"""Cylindria's benchmarks: what it costs on top of ComfyUI, each figure a ratio to a baseline
measured in the same run (see bench/README.md)."""
