"""Tests of training and distillation (quant_models/train)."""
