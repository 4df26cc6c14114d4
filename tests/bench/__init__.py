"""Tests of benchmarks, results pages, notebooks (bench, flow/studies.py, flow/plots.py)."""
