"""Benchmarks for lmjax: `python -m benchmarks.harness --config configs/NAME.py` (see README.md here)."""
