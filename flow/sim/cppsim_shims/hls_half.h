/*
 * sibnn cppsim shim: hls_half.h (Vitis-only header; written for sibnn, not a copy of Xilinx's
 * file).
 *
 * finn-plus' cnpy.h names a global `half` type (Vitis' ap_int.h brings it in; the open ap_types
 * build it out with _AP_ENABLE_HALF_ 0). This header is force-included (g++ -include) so the
 * name exists; a real hls_half.h earlier on the include path wins.
 *
 * half: IEEE 754 binary16 storage (1 sign, 5 exponent, 10 fraction bits); conversion from float
 * rounds to nearest, ties to even; arithmetic is done in float and rounded back.
 */
#ifndef __HLS_HALF_H__
#define __HLS_HALF_H__

#ifdef __cplusplus
#include <cstdint>
#include <cstring>
#include <ostream>

class half {
	std::uint16_t m_bits = 0;

	static std::uint16_t from_float(float f) {
		std::uint32_t x;
		std::memcpy(&x, &f, sizeof x);
		std::uint16_t const sign = std::uint16_t((x >> 16) & 0x8000u);
		std::uint32_t const exp = (x >> 23) & 0xffu;
		std::uint32_t mant = x & 0x7fffffu;
		if(exp == 0xffu) {  // inf / nan (keep nan quiet and non-zero)
			return std::uint16_t(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
		}
		int const e = int(exp) - 127 + 15;
		if(e >= 0x1f) return std::uint16_t(sign | 0x7c00u);  // overflow -> inf
		if(e <= 0) {  // subnormal half (or zero)
			if(e < -10) return sign;
			mant |= 0x800000u;
			int const shift = 14 - e;
			std::uint32_t const q = mant >> shift;
			std::uint32_t const rem = mant & ((1u << shift) - 1u);
			std::uint32_t const halfway = 1u << (shift - 1);
			std::uint32_t const r = q + ((rem > halfway || (rem == halfway && (q & 1u))) ? 1u : 0u);
			return std::uint16_t(sign | r);
		}
		std::uint32_t const q = (std::uint32_t(e) << 10) | (mant >> 13);
		std::uint32_t const rem = mant & 0x1fffu;
		std::uint32_t const r = q + ((rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ? 1u : 0u);
		return std::uint16_t(sign | r);  // a carry into the exponent rounds up to inf correctly
	}

	static float to_float(std::uint16_t h) {
		std::uint32_t const sign = std::uint32_t(h & 0x8000u) << 16;
		std::uint32_t exp = (h >> 10) & 0x1fu;
		std::uint32_t mant = h & 0x3ffu;
		std::uint32_t x;
		if(exp == 0x1fu) {
			x = sign | 0x7f800000u | (mant << 13);
		} else if(exp == 0) {
			if(mant == 0) {
				x = sign;
			} else {  // normalise a subnormal half
				int e = -1;
				do { mant <<= 1; e++; } while(!(mant & 0x400u));
				x = sign | (std::uint32_t(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
			}
		} else {
			x = sign | ((exp + 127 - 15) << 23) | (mant << 13);
		}
		float f;
		std::memcpy(&f, &x, sizeof f);
		return f;
	}

public:
	half() = default;
	half(float f) : m_bits(from_float(f)) {}
	half(double d) : m_bits(from_float(float(d))) {}
	half(int i) : m_bits(from_float(float(i))) {}
	operator float() const { return to_float(m_bits); }

	std::uint16_t get_bits() const { return m_bits; }
	void set_bits(std::uint16_t bits) { m_bits = bits; }

	half &operator+=(half o) { return *this = half(float(*this) + float(o)); }
	half &operator-=(half o) { return *this = half(float(*this) - float(o)); }
	half &operator*=(half o) { return *this = half(float(*this) * float(o)); }
	half &operator/=(half o) { return *this = half(float(*this) / float(o)); }
	half operator-() const { half r; r.m_bits = std::uint16_t(m_bits ^ 0x8000u); return r; }
	friend std::ostream &operator<<(std::ostream &os, half h) { return os << float(h); }
};
#endif  // __cplusplus

#endif  // __HLS_HALF_H__
