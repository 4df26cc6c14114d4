"""Benchmarks: each writes bench/results/<name>.json and a Markdown table; ratios from one run."""
