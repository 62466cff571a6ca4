// Framework-free CPU core of normexport::PositionalNorm.
//
// X is (N, C, S) contiguous (S = product of the spatial dims). For every sample n
// and position p the statistics run over the C channels, which sit S elements
// apart in memory. The work unit is a block of positions of one sample: the
// per-position sums live in small arrays and every channel row of the block is
// walked contiguously (vectorisable, one cache line serves many positions), two
// passes over the block (the second normally from cache):
//   pass 1  d = x[c, p] - shift[p]; sum[p] += d; sq[p] += d^2  (compute type, flushed
//           into double every 64 channels); shift = mean of the first <= 8 channels:
//           Mean = shift + sum / C, M2 = sq - sum^2 / C, no E[x^2] - E[x]^2 cancellation
//   pass 2  y[c, p] = ((x[c, p] - m_hi[p]) - m_lo[p]) * inv_std[p]   (compute type)
// A sample's positions are split into equal blocks. While pass 2 writes a block, the next
// block of the task is prefetched into L2 row by row (its C rows are strided, which the
// hardware prefetchers follow poorly), so its pass 1 overlaps this block's writes.
// Std = sqrt(M2 / (C - unbiased) + eps). The mean is carried as a compute-type
// pair (hi + lo) in pass 2 so large means (1e3 with std 1e-2) stay accurate.
// The work of a block depends only on its positions: results do not depend on
// how blocks are split across threads.
// float16 rows are converted to float through a row buffer (F16C when present);
// double is computed in double. NaN / Inf at a position make its statistics and
// its whole Y column NaN (Mean keeps +-inf), like the float64 reference.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "normexport/common.h"
#include "normexport/cpu_cache.h"
#include "normexport/cpu_half.h"
#include "normexport/cpu_stream.h"

namespace normexport {
namespace pono {

// Largest block of positions handled at once (arrays on the stack: <= 80 KiB for double).
constexpr int64_t kMaxBlock = 1024;

// Positions per block for C channels and S positions: the block's rows (C * block elements,
// 256 KiB of float) should stay in L2 between the passes, and each row segment should be long
// (up to 4 KiB) so the hardware prefetchers stream it from memory; at least 64 positions, a
// multiple of 16. The positions of a sample are split into equal blocks (3136 = 4 x 784, not
// 3 x 1024 + 64: a 64-position block reads 256-byte row pieces that no prefetcher follows).
inline int64_t BlockSize(int64_t channels, int64_t positions) noexcept {
  int64_t b = (int64_t{1} << 16) / (channels > 0 ? channels : 1);
  b = b / 16 * 16;
  if (b < 64) b = 64;
  if (b > kMaxBlock) b = kMaxBlock;
  if (positions > b) {
    const int64_t blocks = (positions + b - 1) / b;
    const int64_t even = ((positions + blocks - 1) / blocks + 15) / 16 * 16;
    if (even < b) b = even;
  }
  return b;
}

namespace detail {

template <typename T>
struct compute_type {
  using type = float;
};
template <>
struct compute_type<double> {
  using type = double;
};

inline float to_compute(half v) noexcept { return to_float(v); }
inline float to_compute(float v) noexcept { return v; }
inline double to_compute(double v) noexcept { return v; }

// Row access in the compute type: float/double read in place, half converted into buf.
template <typename C>
inline const C* row(const C* x, int64_t /*len*/, C* /*buf*/) noexcept {
  return x;
}
inline const float* row(const half* x, int64_t len, float* buf) noexcept {
  half_to_float_n(x, buf, static_cast<size_t>(len));
  return buf;
}

template <typename T, typename C>
inline void store_stat(const double* v, T* dst, int64_t len, C* buf) noexcept {
  if constexpr (std::is_same<T, half>::value) {
    for (int64_t j = 0; j < len; ++j) buf[j] = static_cast<float>(v[j]);
    float_to_half_n(buf, dst, static_cast<size_t>(len));
  } else {
    for (int64_t j = 0; j < len; ++j) dst[j] = static_cast<T>(v[j]);
  }
}

}  // namespace detail

// Processes positions [p0, p0 + len) (len <= kMaxBlock) of sample n.
// x, y: (N, C, S); mean, std_out: (N, S). T: float, half (float math) or double.
// nt: Y rows written with streaming stores (the caller fences at the end of its task).
// next (may be null): the first element (channel 0) of the block processed after this one, of
// next_len positions, prefetched into L2 during pass 2 (no effect on any value).
#if defined(__GNUC__)
#define NX_PONO_INLINE inline __attribute__((always_inline))
#define NX_PONO_LAMBDA __attribute__((always_inline))
#else
#define NX_PONO_INLINE inline
#define NX_PONO_LAMBDA
#endif

template <typename T>
NX_PONO_INLINE void pono_block(const T* x, T* y, T* mean_out, T* std_out, int64_t channels, int64_t positions, int64_t n,
                int64_t p0, int64_t len, float eps, bool unbiased, bool nt = false,
                const T* next = nullptr, int64_t next_len = 0) noexcept {
  using C = typename detail::compute_type<T>::type;
  double sum[kMaxBlock];
  double sq[kMaxBlock];
  C m_hi[kMaxBlock], m_lo[kMaxBlock], inv[kMaxBlock];
  C buf[kMaxBlock];  // half rows in float; unused for float/double
  const T* xs = x + n * channels * positions + p0;
  T* ys = y + n * channels * positions + p0;

  // pass 1: shifted sums, shift = the mean of the first (up to) 8 channels at each
  // position (in double, then rounded to the compute type):
  //   d = x - shift,  sum[p] = sum_c d,  sq[p] = sum_c d^2
  //   mean = shift + sum / C,  M2 = sq - sum^2 / C
  // The shift puts the sums next to the mean, so M2 suffers no E[x^2] - E[x]^2
  // cancellation (sum^2 / C is a small correction). The per-position sums run in the
  // compute type (vectorised at its width) and are flushed into double every
  // kFlush channels, so their rounding error is that of a kFlush-term sum.
  constexpr int64_t kFlush = 64;
  double shift[kMaxBlock];
  C shift_c[kMaxBlock], s_c[kMaxBlock], q_c[kMaxBlock];
  {
    const int64_t pilot = channels < 8 ? channels : 8;
    for (int64_t j = 0; j < len; ++j) shift[j] = 0.0;
    for (int64_t c = 0; c < pilot; ++c) {
      const C* r = detail::row(xs + c * positions, len, buf);
      for (int64_t j = 0; j < len; ++j) shift[j] += static_cast<double>(r[j]);
    }
    for (int64_t j = 0; j < len; ++j) {
      shift_c[j] = static_cast<C>(shift[j] / static_cast<double>(pilot));
      shift[j] = static_cast<double>(shift_c[j]);
      sum[j] = 0.0;
      sq[j] = 0.0;
    }
  }
  for (int64_t c0 = 0; c0 < channels; c0 += kFlush) {
    const int64_t c1 = (channels - c0 < kFlush) ? channels : c0 + kFlush;
    for (int64_t j = 0; j < len; ++j) s_c[j] = q_c[j] = C(0);
    int64_t c = c0;
    if constexpr (!std::is_same<T, half>::value) {
      // four rows per sweep: a quarter of the accumulator loads and stores through L1
      for (; c + 4 <= c1; c += 4) {
        const C* r0 = xs + c * positions;
        const C* r1 = r0 + positions;
        const C* r2 = r1 + positions;
        const C* r3 = r2 + positions;
        for (int64_t j = 0; j < len; ++j) {
          const C d0 = r0[j] - shift_c[j], d1 = r1[j] - shift_c[j];
          const C d2 = r2[j] - shift_c[j], d3 = r3[j] - shift_c[j];
          s_c[j] += (d0 + d1) + (d2 + d3);
          q_c[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
        }
      }
    }
    for (; c < c1; ++c) {
      const C* r = detail::row(xs + c * positions, len, buf);
      for (int64_t j = 0; j < len; ++j) {
        const C d = r[j] - shift_c[j];
        s_c[j] += d;
        q_c[j] += d * d;
      }
    }
    for (int64_t j = 0; j < len; ++j) {
      sum[j] += static_cast<double>(s_c[j]);
      sq[j] += static_cast<double>(q_c[j]);
    }
  }
  const double inv_c = 1.0 / static_cast<double>(channels);
  const double divisor = static_cast<double>(channels - (unbiased ? 1 : 0));
  // (one vectorisable loop: the library is built with -fno-math-errno, so sqrt is an instruction)
  for (int64_t j = 0; j < len; ++j) {
    const double m2 = sq[j] - sum[j] * sum[j] * inv_c;
    const double var = (m2 < 0.0 ? 0.0 : m2) / divisor;  // NaN stays NaN
    const double mean = shift[j] + sum[j] * inv_c;
    sum[j] = mean;
    const double sd = std::sqrt(var + static_cast<double>(eps));
    sq[j] = sd;  // now the std
    m_hi[j] = static_cast<C>(mean);
    m_lo[j] = static_cast<C>(mean - static_cast<double>(m_hi[j]));  // NaN for inf / NaN means
    inv[j] = static_cast<C>(1.0 / sd);
  }
  int non_finite_shift = 0;  // shift - shift is NaN exactly for +-inf / NaN
  for (int64_t j = 0; j < len; ++j) non_finite_shift |= (shift[j] - shift[j] != 0.0);
  if (non_finite_shift) {
    // inf / NaN in the pilot channels: x - shift is NaN; the plain mean keeps +-inf like the reference
    // (std and Y are NaN either way)
    for (int64_t j = 0; j < len; ++j) {
      if (std::isfinite(shift[j])) continue;
      double plain = 0.0;
      for (int64_t c = 0; c < channels; ++c) plain += static_cast<double>(detail::to_compute(xs[c * positions + j]));
      sum[j] = plain * inv_c;
    }
  }
  detail::store_stat<T, C>(sum, mean_out + n * positions + p0, len, buf);
  detail::store_stat<T, C>(sq, std_out + n * positions + p0, len, buf);
  // pass 2, one channel row at a time; while a row is written, the same row of the next block
  // (`next`, next_len positions) is prefetched into L2, so that block's statistics pass finds
  // it there instead of waiting on memory with nothing to overlap.
  // The prefetches are spread over the row in pieces of kPiece positions (a burst of a whole
  // row's lines would fill the line-fill buffers and stall the stores).
  constexpr int64_t kPiece = 256;
  for (int64_t c = 0; c < channels; ++c) {
    const char* pf = next != nullptr ? reinterpret_cast<const char*>(next + c * positions) : nullptr;
    const T* r = xs + c * positions;
    T* yr = ys + c * positions;
    for (int64_t j0 = 0; j0 < len; j0 += kPiece) {
      const int64_t j1 = (len - j0 < kPiece) ? len : j0 + kPiece;
      if (pf != nullptr && j0 < next_len) {
        const int64_t e = next_len < j1 ? next_len : j1;
        cache::PrefetchL2(pf + j0 * static_cast<int64_t>(sizeof(T)), (e - j0) * static_cast<int64_t>(sizeof(T)));
      }
      if constexpr (std::is_same<T, half>::value) {
        half_to_float_n(r + j0, buf, static_cast<size_t>(j1 - j0));
        for (int64_t j = j0; j < j1; ++j) buf[j - j0] = ((buf[j - j0] - m_hi[j]) - m_lo[j]) * inv[j];
        stream::FloatToHalf(buf, yr + j0, j1 - j0, nt);
      } else {
        T* o = nt ? buf : yr + j0;
        const T* rj = r + j0;
        const C *hi = m_hi + j0, *lo = m_lo + j0, *iv = inv + j0;
        for (int64_t k = 0; k < j1 - j0; ++k) o[k] = ((rj[k] - hi[k]) - lo[k]) * iv[k];
        if (nt) stream::Store(yr + j0, buf, j1 - j0);
      }
    }
    if (pf != nullptr && len < next_len)  // the next block is longer (the last block of a sample is not)
      cache::PrefetchL2(pf + len * static_cast<int64_t>(sizeof(T)),
                        (next_len - len) * static_cast<int64_t>(sizeof(T)));
  }
}

// Block b of the (sample, block) grid: blocks_per_sample blocks of `block` positions per sample.
// (force-inlined so pono_cpu.cc can compile it again inside an AVX2 + FMA wrapper)
template <typename T>
NX_PONO_INLINE void pono_blocks(const T* x, T* y, T* mean_out, T* std_out, int64_t channels, int64_t positions, int64_t block,
                 int64_t blocks_per_sample, int64_t begin, int64_t end, float eps, bool unbiased,
                 bool nt = false) noexcept {
  struct Pos {
    int64_t n, p0, len;
  };
  const auto at = [&](int64_t b) NX_PONO_LAMBDA -> Pos {
    const int64_t p0 = (b % blocks_per_sample) * block;
    return {b / blocks_per_sample, p0, (positions - p0 < block) ? positions - p0 : block};
  };
  for (int64_t b = begin; b < end; ++b) {
    const Pos cur = at(b);
    const Pos nxt = at(b + 1);  // prefetched while this block is written, when the task runs it next
    const bool has_next = b + 1 < end;
    pono_block<T>(x, y, mean_out, std_out, channels, positions, cur.n, cur.p0, cur.len, eps, unbiased, nt,
                  has_next ? x + nxt.n * channels * positions + nxt.p0 : nullptr, has_next ? nxt.len : 0);
  }
}

}  // namespace pono
}  // namespace normexport
