"""The front end: models and QONNX files in, sibnn's integer IR, the golden model and the exact lowering to FINN's streamlined graph out."""
