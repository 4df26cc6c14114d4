/*
 * sibnn cppsim shim: flatten.hpp (written for sibnn; not a copy of finn-hlslib's header).
 *
 * Used only when the finn-hlslib in use lacks flatten.hpp (its include directory comes first, so
 * a real file always wins). finn-plus' npy2apintstream.hpp and generated elementwise code need:
 *
 *   width_v<T>            bit width of an element type (ap_[u]int/ap_[u]fixed: W; bool: 1;
 *                         other arithmetic types: 8 * sizeof(T))
 *   flatten(T (&a)[N])    ap_uint<N * width_v<T>> with a[j] in bits [j*W, (j+1)*W)
 *   unflatten(T (&a)[N], packed)   the inverse: a[j] = bits [j*W, (j+1)*W) of packed
 *
 * Element 0 sits in the least significant bits, as finn-hlslib's Slice<> reads it.
 */
#ifndef FLATTEN_HPP
#define FLATTEN_HPP

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <ap_int.h>

namespace sibnn_shim {

template<typename T, typename Enable = void>
struct bit_width {
	static_assert(std::is_arithmetic<T>::value, "width_v: unsupported element type");
	static constexpr std::size_t value = std::is_same<T, bool>::value ? 1 : 8 * sizeof(T);
};
template<int W> struct bit_width<ap_int<W>> { static constexpr std::size_t value = W; };
template<int W> struct bit_width<ap_uint<W>> { static constexpr std::size_t value = W; };
template<int W, int I, ap_q_mode Q, ap_o_mode O, int N>
struct bit_width<ap_fixed<W, I, Q, O, N>> { static constexpr std::size_t value = W; };
template<int W, int I, ap_q_mode Q, ap_o_mode O, int N>
struct bit_width<ap_ufixed<W, I, Q, O, N>> { static constexpr std::size_t value = W; };

// The raw bits of one element, as an unsigned integer of its width.
template<int W> ap_uint<W> bits_of(ap_uint<W> const &v) { return v; }
template<int W> ap_uint<W> bits_of(ap_int<W> const &v) { return ap_uint<W>(v); }
template<int W, int I, ap_q_mode Q, ap_o_mode O, int N>
ap_uint<W> bits_of(ap_fixed<W, I, Q, O, N> const &v) { return v(W - 1, 0); }
template<int W, int I, ap_q_mode Q, ap_o_mode O, int N>
ap_uint<W> bits_of(ap_ufixed<W, I, Q, O, N> const &v) { return v(W - 1, 0); }
template<typename T>
ap_uint<bit_width<T>::value> bits_of(T const &v) {
	static_assert(std::is_arithmetic<T>::value, "flatten: unsupported element type");
	if constexpr (std::is_integral<T>::value) {
		return ap_uint<bit_width<T>::value>(v);
	} else {
		using Raw = typename std::conditional<sizeof(T) == 4, std::uint32_t, std::uint64_t>::type;
		static_assert(sizeof(T) == sizeof(Raw), "flatten: unsupported floating-point type");
		Raw raw;
		std::memcpy(&raw, &v, sizeof raw);
		return ap_uint<bit_width<T>::value>(raw);
	}
}

// One element from its raw bits (the inverse of bits_of).
template<typename T, int W>
void from_bits(T &dst, ap_uint<W> const &bits) {
	if constexpr (std::is_arithmetic<T>::value && !std::is_integral<T>::value) {
		using Raw = typename std::conditional<sizeof(T) == 4, std::uint32_t, std::uint64_t>::type;
		Raw const raw = Raw(bits.to_uint64());
		std::memcpy(&dst, &raw, sizeof dst);
	} else if constexpr (std::is_arithmetic<T>::value) {
		dst = T(bits.to_uint64());
	} else {
		dst(W - 1, 0) = bits;  // ap_[u]int / ap_[u]fixed: assign the bit image
	}
}

}  // namespace sibnn_shim

template<typename T>
constexpr std::size_t width_v = sibnn_shim::bit_width<T>::value;

template<typename T, std::size_t N>
ap_uint<N * width_v<T>> flatten(T const (&buffer)[N]) {
	constexpr std::size_t W = width_v<T>;
	ap_uint<N * W> flat = 0;
	for(std::size_t j = 0; j < N; j++) {
		flat((j + 1) * W - 1, j * W) = sibnn_shim::bits_of(buffer[j]);
	}
	return flat;
}

template<typename T, std::size_t N, int PW>
void unflatten(T (&buffer)[N], ap_uint<PW> const &packed) {
	constexpr std::size_t W = width_v<T>;
	static_assert(N * W <= std::size_t(PW), "unflatten: packed word narrower than the elements");
	for(std::size_t j = 0; j < N; j++) {
		ap_uint<W> const bits = packed((j + 1) * W - 1, j * W);
		sibnn_shim::from_bits(buffer[j], bits);
	}
}

#endif  // FLATTEN_HPP
