"""Tests of models, quantizers, registry, checkpoints, data (quant_models)."""
