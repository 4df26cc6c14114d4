"""Tests of the front end: export, integer IR, golden model (flow/front, flow/proof/export.py)."""
