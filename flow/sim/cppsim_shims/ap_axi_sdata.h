/*
 * sibnn cppsim shim: ap_axi_sdata.h (Vitis-only header; written for sibnn from the documented
 * AXI4-Stream side-channel semantics, not a copy of Xilinx's file).
 *
 * finn-hlslib's streamtools.h includes it for the QDMA adapters. A C++ simulation needs the
 * structs' data members and accessors only; the side channels have no timing here.
 *   ap_axis<D, U, TI, TD>   signed data;   ap_axiu<D, U, TI, TD>  unsigned data;
 *   qdma_axis<D, U, TI, TD> data + keep + last with get_/set_ accessors.
 * A side channel of width 0 is kept as a 1-bit field (ap_uint<0> does not exist).
 */
#ifndef AP_AXI_SDATA_H
#define AP_AXI_SDATA_H

#include <ap_int.h>

namespace sibnn_shim {
template<int W> struct nonzero_width { static constexpr int value = W > 0 ? W : 1; };
}

namespace sibnn_shim {
// The fields ap_axis and ap_axiu share; only the data member's signedness differs.
template<typename Data, int D, int U, int TI, int TD>
struct axis_fields {
	Data data;
	ap_uint<(D + 7) / 8> keep;
	ap_uint<(D + 7) / 8> strb;
	ap_uint<nonzero_width<U>::value> user;
	ap_uint<1> last;
	ap_uint<nonzero_width<TI>::value> id;
	ap_uint<nonzero_width<TD>::value> dest;
};
}

template<int D, int U, int TI, int TD>
struct ap_axis : sibnn_shim::axis_fields<ap_int<D>, D, U, TI, TD> {};

template<int D, int U, int TI, int TD>
struct ap_axiu : sibnn_shim::axis_fields<ap_uint<D>, D, U, TI, TD> {};

template<int D, int U, int TI, int TD>
struct qdma_axis {
	ap_uint<D> data;
	ap_uint<(D + 7) / 8> keep;
	ap_uint<1> last;

	ap_uint<D> get_data() const { return data; }
	ap_uint<(D + 7) / 8> get_keep() const { return keep; }
	ap_uint<1> get_last() const { return last; }
	void set_data(ap_uint<D> const &d) { data = d; }
	void set_keep(ap_uint<(D + 7) / 8> const &k) { keep = k; }
	void set_last(ap_uint<1> const &l) { last = l; }
};

#endif  // AP_AXI_SDATA_H
