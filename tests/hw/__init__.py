"""Tests of the FINN back end: lowering, rewrites, folding, resources, FINN's python models (flow/hw)."""
