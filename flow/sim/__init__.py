"""The generated code run: FINN's HLS C++ compiled with g++ (cppsim) and its RTL with Verilator
(rtlsim), node by node against the golden model (simulate), and the whole accelerator stitched
and run cycle by cycle (stitched*), without Vivado or Vitis."""
