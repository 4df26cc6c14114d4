"""The compiler: a QONNX network into a bit-exact FINN dataflow accelerator.

``flow/build.py`` is the CLI (``sibnn-build``); its sub-packages follow the pipeline: ``env``
(FINN and the tools), ``boards`` (the board files), ``front`` (export, integer IR, golden model),
``hw`` (FINN's steps, rewrites, folding) and ``proof`` (the exactness checks).
"""
