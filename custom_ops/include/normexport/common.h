// Framework-free helpers shared by every normexport kernel (host C++ and CUDA).
//
// * normexport::half: IEEE-754 binary16 stored as uint16_t, with exact
//   half->float and round-to-nearest-even float->half conversions (inf, NaN and
//   subnormals handled).  The scalar conversions are __host__ __device__ when
//   compiled by nvcc (CUDA kernels should still prefer cuda_fp16 intrinsics).
// * to_float / from_float<T>: numeric trait used by templated kernels so that
//   float16 data is computed with float accumulation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define NORMEXPORT_HD __host__ __device__ __forceinline__
#else
#define NORMEXPORT_HD inline
#endif

namespace normexport {

namespace detail {
NORMEXPORT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}
NORMEXPORT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}
}  // namespace detail

// binary16 -> binary32. Exact for every input (NaN payloads are kept).
NORMEXPORT_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu) return detail::bits_float(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    // zero or subnormal: value = man * 2^-24, exact in float
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return detail::bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// binary32 -> binary16 with round-to-nearest-even; overflow gives +-inf,
// tiny values become subnormals or +-0, NaN stays NaN (quietened).
NORMEXPORT_HD uint16_t float_to_half_bits(float f) {
  const uint32_t x = detail::float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf or NaN
    if (ax == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);
    return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  }
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                                                 // < 2^-14: subnormal half
    if (ax < 0x33000000u) return static_cast<uint16_t>(sign);             // < 2^-25: rounds to 0
    const uint32_t e = ax >> 23;                                          // 102..112
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;                                      // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;               // may carry into the smallest normal
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = (ax - 0x38000000u) >> 13;  // rebias exponent 127 -> 15
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // carry may bump the exponent: still correct
  return static_cast<uint16_t>(sign | r);
}

// IEEE binary16 storage type. Layout-compatible with uint16_t, Ort::Float16_t and __half.
struct half {
  uint16_t bits;

  half() = default;
  NORMEXPORT_HD static half from_bits(uint16_t b) {
    half h;
    h.bits = b;
    return h;
  }
  NORMEXPORT_HD explicit half(float f) : bits(float_to_half_bits(f)) {}
  NORMEXPORT_HD explicit operator float() const { return half_bits_to_float(bits); }
};
static_assert(sizeof(half) == 2, "half must be 2 bytes");
static_assert(std::is_trivially_copyable<half>::value && std::is_standard_layout<half>::value,
              "half must be a plain 16-bit value");

// Numeric trait: compute type is float for both float and half.
template <typename T>
struct num_traits;

template <>
struct num_traits<float> {
  using compute_type = float;
  NORMEXPORT_HD static float to_float(float v) { return v; }
  NORMEXPORT_HD static float from_float(float v) { return v; }
};

template <>
struct num_traits<half> {
  using compute_type = float;
  NORMEXPORT_HD static float to_float(half v) { return half_bits_to_float(v.bits); }
  NORMEXPORT_HD static half from_float(float v) { return half::from_bits(float_to_half_bits(v)); }
};

template <typename T>
NORMEXPORT_HD float to_float(T v) {
  return num_traits<T>::to_float(v);
}
template <typename T>
NORMEXPORT_HD T from_float(float v) {
  return num_traits<T>::from_float(v);
}

}  // namespace normexport
