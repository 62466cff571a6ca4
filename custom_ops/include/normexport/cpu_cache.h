// Cache sizes for the CPU kernels' blocking decisions (host C++ only, not for nvcc).
//
// The sizes come from sysconf (glibc reads CPUID / sysfs) and are fixed per process. Work
// splits that use them depend on the machine, never on the thread count, so results stay
// bit-identical for any intra_op_num_threads.
#pragma once

#include <unistd.h>

#include <cstdint>

namespace normexport {
namespace cache {

namespace detail {
// sysconf(name) when it is a positive byte count, else -1.
inline int64_t Sysconf(int name) noexcept {
  const long b = sysconf(name);
  return b > 0 ? static_cast<int64_t>(b) : -1;
}
}  // namespace detail

// Last-level cache bytes (L3, else L2; 32 MiB when unknown).
inline int64_t LlcBytes() noexcept {
  static const int64_t v = [] {
    int64_t b = -1;
#if defined(_SC_LEVEL3_CACHE_SIZE)
    b = detail::Sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
#if defined(_SC_LEVEL2_CACHE_SIZE)
    if (b <= 0) b = detail::Sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return b > 0 ? b : (int64_t{32} << 20);
  }();
  return v;
}

// Per-core L2 bytes (1 MiB when unknown).
inline int64_t L2Bytes() noexcept {
#if defined(_SC_LEVEL2_CACHE_SIZE)
  static const int64_t v = detail::Sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (v > 0) return v;
#endif
  return int64_t{1} << 20;
}

// Bytes of input one task may keep hot between its statistics and normalize passes: half the
// L2 (the other half holds the output tile, the next block's prefetched lines and the rest),
// clamped to [256 KiB, 2 MiB]. The last-level cache is not counted on: on a shared (virtual)
// machine a re-read of a block of several MiB costs about as much as reading it from memory.
inline int64_t TaskBytes() noexcept {
  int64_t b = L2Bytes() / 2;
  if (b < (int64_t{256} << 10)) b = int64_t{256} << 10;
  if (b > (int64_t{2} << 20)) b = int64_t{2} << 20;
  return b;
}

// Asks for [p, p + bytes) to be brought into L2 (one prefetch per 64-byte line; no effect on any
// value). A kernel calls it for the next unit of its task in pieces while it writes the current
// one, so that unit's statistics pass reads from L2 instead of stalling on memory while the
// write bandwidth sits idle. Worth it for strided units (PositionalNorm's blocks of C channel
// rows: +13-16%); contiguous units are already streamed by the hardware prefetchers
// (SwitchableNorm samples, AdaIN planes: no gain measured). Pieces of a few KiB: a burst of many
// lines fills the line-fill buffers and stalls the stores that run beside it.
inline void PrefetchL2(const void* p, int64_t bytes) noexcept {
#if defined(__GNUC__)
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 2);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace cache
}  // namespace normexport
