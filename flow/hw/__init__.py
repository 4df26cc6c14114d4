"""The FINN dataflow back end: the one FINN glue module (finn_env), graph rewrites, the build's step list, folding and resource models."""
