"""Tests of the build CLI end to end: plan, config, boards, reports, the knob sweep, the wheel (flow)."""
