"""The environment the flow runs in: FINN and the Xilinx tools (:mod:`flow.env.finn`, the one
module that imports FINN's builder and checks for Vivado, once) and what FINN knows of each FPGA
part (:mod:`flow.env.parts`). Everything else in :mod:`flow` sits above this layer."""
