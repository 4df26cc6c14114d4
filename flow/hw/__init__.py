"""The FINN dataflow back end: graph rewrites, the build's step list, folding and resource models
(the FINN glue itself is :mod:`flow.env.finn`)."""
