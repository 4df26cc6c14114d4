"""Tests of reliability across every CLI: errors, exit codes, signals, faults, bad inputs (sibnn_base)."""
