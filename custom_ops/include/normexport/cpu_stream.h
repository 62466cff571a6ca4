// Non-temporal (streaming) stores for CPU kernels whose output is much larger than the
// last-level cache (host C++ only, not for nvcc).
//
// An ordinary store first reads the destination line into the cache (read for ownership), so a
// kernel that reads X once and writes Y moves three times the bytes of Y through memory instead
// of two; a streaming store writes whole lines straight to memory. It is a loss for tensors that
// fit in cache (the next layer would find Y there), so kernels use it only when the output
// reaches ThresholdBytes():
//   NORMEXPORT_NT_STORE_BYTES=<bytes>  (read once per process) if set: 0 = always stream;
//   else the last-level cache size (sysconf, 32 MiB when unknown).
// The choice depends only on the shape (and that process-wide setting), never on the thread
// count, and it changes no result: the values stored are the same either way.
//
// Usage: compute a tile of the output in an L1-resident stack buffer, then Store(dst, tile, n);
// Fence() once at the end of every task that streamed (orders the weakly ordered stores
// before the task's completion is published to the joining thread).
// SSE2 (baseline x86-64) 16-byte streaming stores: no CPU dispatch needed. Elsewhere Store is a
// plain copy and UseNt() is false.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "normexport/common.h"
#include "normexport/cpu_cache.h"
#include "normexport/cpu_half.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__CUDACC__)
#define NORMEXPORT_HAVE_NT_STORES 1
#include <emmintrin.h>
#endif

#if defined(__GNUC__)
#define NX_STREAM_INLINE inline __attribute__((always_inline))
#define NX_STREAM_LAMBDA __attribute__((always_inline))
#else
#define NX_STREAM_INLINE inline
#define NX_STREAM_LAMBDA
#endif

namespace normexport {
namespace stream {

// Elements of a streaming tile (stack buffer of the compute type).
inline constexpr int64_t kTile = 1024;

inline int64_t DefaultThresholdBytes() noexcept { return cache::LlcBytes(); }

// Parses NORMEXPORT_NT_STORE_BYTES (a non-negative decimal integer); -1 when unset or invalid.
inline int64_t ParseThreshold(const char* s) noexcept {
  if (s == nullptr || *s == '\0') return -1;
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (end == s || *end != '\0' || v < 0) return -1;
  return static_cast<int64_t>(v);
}

inline int64_t ThresholdBytes() noexcept {
  static const int64_t v = [] {
    const int64_t e = ParseThreshold(std::getenv("NORMEXPORT_NT_STORE_BYTES"));
    return e >= 0 ? e : DefaultThresholdBytes();
  }();
  return v;
}

// Whether a kernel writing output_bytes in total should stream its stores.
inline bool UseNt(int64_t output_bytes) noexcept {
#if defined(NORMEXPORT_HAVE_NT_STORES)
  return output_bytes > 0 && output_bytes >= ThresholdBytes();
#else
  (void)output_bytes;
  return false;
#endif
}

// Copies `bytes` bytes from src to dst, with streaming stores for the 16-byte aligned middle of
// dst (ordinary stores for the unaligned head and tail).
inline void StoreBytes(void* dst, const void* src, size_t bytes) noexcept {
#if defined(NORMEXPORT_HAVE_NT_STORES)
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  size_t head = (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15;
  if (head > bytes) head = bytes;
  if (head) std::memcpy(d, s, head);
  size_t i = head;
  for (; i + 64 <= bytes; i += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 32));
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 48), e);
  }
  for (; i + 16 <= bytes; i += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
  if (i < bytes) std::memcpy(d + i, s + i, bytes - i);
#else
  std::memcpy(dst, src, bytes);
#endif
}

template <typename T>
inline void Store(T* dst, const T* src, int64_t n) noexcept {
  if (n > 0) StoreBytes(dst, src, static_cast<size_t>(n) * sizeof(T));
}

// Writes n results into y: f(out, off, len) computes elements [off, off + len) into out[0, len).
// Without nt, f writes straight into y (one call); with nt, through an L1 tile and Store.
// Force-inlined, with its callers' lambdas marked NX_STREAM_INLINE too: the kernels compile
// their cores a second time inside AVX2 + FMA wrappers, and an out-of-line copy of this
// template (or of the lambda) is compiled for baseline x86-64 only, so the whole normalize pass
// ran with 4-wide SSE and no FMA (half of SwitchableNorm's time).
template <typename T, typename F>
NX_STREAM_INLINE void WriteTiled(T* y, int64_t n, bool nt, const F& f) {
  if (!nt) {
    f(y, int64_t{0}, n);
    return;
  }
  T tile[kTile];
  for (int64_t off = 0; off < n; off += kTile) {
    const int64_t len = (n - off < kTile) ? n - off : kTile;
    f(tile, off, len);
    Store(y + off, tile, len);
  }
}

// WriteTiled for the second pass over an input that was just read whole: when the input (the
// same n elements of T) is larger than cache::TaskBytes(), the output is produced in segments
// from the last to the first, so the first re-reads find the input's tail still in L2 instead of
// going to memory for all of it. Same values as WriteTiled (elementwise f).
template <typename T, typename F>
NX_STREAM_INLINE void WriteTiledTailFirst(T* y, int64_t n, bool nt, const F& f) {
  constexpr int64_t kSegment = int64_t{16} << 10;  // elements
  if (n * static_cast<int64_t>(sizeof(T)) <= cache::TaskBytes()) {
    WriteTiled(y, n, nt, f);
    return;
  }
  for (int64_t s = (n - 1) / kSegment * kSegment; s >= 0; s -= kSegment) {
    const int64_t len = (n - s < kSegment) ? n - s : kSegment;
    WriteTiled(y + s, len, nt, [&](T* out, int64_t off, int64_t l) NX_STREAM_LAMBDA { f(out, s + off, l); });
  }
}

// float -> half of n values into y (F16C when present), streamed when nt.
inline void FloatToHalf(const float* src, half* y, int64_t n, bool nt) noexcept {
  if (!nt) {
    float_to_half_n(src, y, static_cast<size_t>(n));
    return;
  }
  half tile[kTile];
  for (int64_t off = 0; off < n; off += kTile) {
    const int64_t len = (n - off < kTile) ? n - off : kTile;
    float_to_half_n(src + off, tile, static_cast<size_t>(len));
    Store(y + off, tile, len);
  }
}

inline void Fence() noexcept {
#if defined(NORMEXPORT_HAVE_NT_STORES)
  _mm_sfence();
#endif
}

}  // namespace stream
}  // namespace normexport
