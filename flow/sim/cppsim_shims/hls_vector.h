/*
 * sibnn cppsim shim: hls_vector.h (Vitis-only header; written for sibnn from the documented
 * semantics of hls::vector, not a copy of Xilinx's file).
 *
 * hls::vector<T, N> is a fixed-size array of N elements with element access, broadcast and
 * list construction, and elementwise arithmetic/bitwise operators against a vector or a scalar.
 * finn-plus' npy2vectorstream.hpp (included by every generated cppsim source) and the
 * "hls_vector" interface style of some layers use it; no timing or packing is modelled.
 */
#ifndef HLS_VECTOR_H
#define HLS_VECTOR_H

#include <array>
#include <cstddef>
#include <initializer_list>
#include <ostream>

namespace hls {

template<typename T, std::size_t N>
class vector {
	static_assert(N > 0, "hls::vector needs at least one element");
	std::array<T, N> m_data{};

public:
	using value_type = T;

	vector() = default;
	vector(T const &value) { m_data.fill(value); }
	vector(std::initializer_list<T> values) {
		std::size_t i = 0;
		for(T const &v : values) {
			if(i == N) break;
			m_data[i++] = v;
		}
	}

	static constexpr std::size_t size() { return N; }
	T &operator[](std::size_t i) { return m_data[i]; }
	T const &operator[](std::size_t i) const { return m_data[i]; }
	T *data() { return m_data.data(); }
	T const *data() const { return m_data.data(); }
	T *begin() { return m_data.data(); }
	T *end() { return m_data.data() + N; }
	T const *begin() const { return m_data.data(); }
	T const *end() const { return m_data.data() + N; }

#define SIBNN_HLS_VECTOR_OP(OP)                                                      \
	vector &operator OP##=(vector const &rhs) {                                      \
		for(std::size_t i = 0; i < N; i++) m_data[i] OP##= rhs.m_data[i];            \
		return *this;                                                                \
	}                                                                                \
	vector &operator OP##=(T const &rhs) {                                           \
		for(std::size_t i = 0; i < N; i++) m_data[i] OP##= rhs;                      \
		return *this;                                                                \
	}                                                                                \
	friend vector operator OP(vector lhs, vector const &rhs) { return lhs OP##= rhs; } \
	friend vector operator OP(vector lhs, T const &rhs) { return lhs OP##= rhs; }      \
	friend vector operator OP(T const &lhs, vector const &rhs) {                     \
		vector r(lhs);                                                               \
		return r OP##= rhs;                                                          \
	}
	SIBNN_HLS_VECTOR_OP(+)
	SIBNN_HLS_VECTOR_OP(-)
	SIBNN_HLS_VECTOR_OP(*)
	SIBNN_HLS_VECTOR_OP(/)
	SIBNN_HLS_VECTOR_OP(%)
	SIBNN_HLS_VECTOR_OP(&)
	SIBNN_HLS_VECTOR_OP(|)
	SIBNN_HLS_VECTOR_OP(^)
#undef SIBNN_HLS_VECTOR_OP

	vector operator-() const {
		vector r;
		for(std::size_t i = 0; i < N; i++) r.m_data[i] = -m_data[i];
		return r;
	}
	vector operator~() const {
		vector r;
		for(std::size_t i = 0; i < N; i++) r.m_data[i] = ~m_data[i];
		return r;
	}
	friend bool operator==(vector const &a, vector const &b) {
		for(std::size_t i = 0; i < N; i++)
			if(!(a.m_data[i] == b.m_data[i])) return false;
		return true;
	}
	friend bool operator!=(vector const &a, vector const &b) { return !(a == b); }
	friend std::ostream &operator<<(std::ostream &os, vector const &v) {
		os << '{';
		for(std::size_t i = 0; i < N; i++) os << (i ? ", " : "") << v.m_data[i];
		return os << '}';
	}
};

}  // namespace hls

#endif  // HLS_VECTOR_H
