"""Tests of generated code run: cppsim, rtlsim, the stitched accelerator (flow/sim)."""
