"""Tests of the stage executor and the verifiers (flow/proof)."""
