// CPU emulation of the small CUDA subset that the GroupNorm / FilterResponseNorm / AdaIN
// kernels (channels first and last), the PositionalNorm / SPADE / SwitchableNorm kernels and
// tests/gpu_check.cu use, so that gpu_check runs their launchers on a machine without a GPU
// (run.sh). Host C++20 only, never part of the library.
//   * one block at a time, one std::thread per CUDA thread; __syncthreads = a std::barrier
//     over the block; warp shuffles through per-thread slots and a per-warp barrier (whole
//     warps of 32 only);
//   * __shared__ = function-static (shared by the block's threads, blocks run one after
//     another), filled with 0xff bytes (NaN) at the start of every block by the
//     ::emu::PoisonShared call run.sh inserts after each declaration; "device" memory =
//     host malloc;
//   * the grid is capped at kEmuMaxBlocks blocks: the kernels' grid-stride loops cover the
//     rest, so those loops are exercised too;
//   * float4 / make_float4 (16-byte aligned), math_constants.h (CUDART_NAN, ... with CUDA's
//     bit patterns); device math (sqrtf, fmaf, exp, ...) is the host's IEEE libm, like CUDA's
//     without fast-math (nvcc may contract a * b + c into an fma where g++ does not).
// It checks indexing, synchronization structure and numerics; not coalescing, occupancy,
// launch limits or timing (those need the GPU: normexport gpu-check).
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

using std::isfinite;
using std::isnan;

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

namespace emu {
inline thread_local dim3 tIdx, bIdx;
inline dim3 bDim, gDim;
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline unsigned num_threads = 0;
inline unsigned kEmuMaxBlocks = 3;
template <class T> inline std::vector<T> slots;
inline uint64_t block_epoch = 0;  // one per block run: __shared__ is fresh (garbage) per block
inline std::mutex shared_mutex;
inline std::map<const void*, uint64_t> shared_epoch;
inline unsigned Lin() { return tIdx.x + bDim.x * (tIdx.y + bDim.y * tIdx.z); }

struct Launch {
  dim3 grid, block;
  Launch(dim3 g, dim3 b, size_t = 0, void* = nullptr) : grid(g), block(b) {}
  template <class... P, class... A>
  void operator()(void (*k)(P...), A... args) {
    gDim = dim3(grid.x < kEmuMaxBlocks ? grid.x : kEmuMaxBlocks);
    bDim = block;
    num_threads = block.x * block.y * block.z;
    block_barrier = std::make_unique<std::barrier<>>(num_threads);
    warp_barriers.clear();
    for (unsigned w = 0; w * 32 < num_threads; ++w)
      warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32u, num_threads - w * 32)));
    slots<float>.assign(num_threads, 0.f);
    slots<double>.assign(num_threads, 0.0);
    for (unsigned b = 0; b < gDim.x; ++b) {
      ++block_epoch;
      std::vector<std::thread> ts;
      for (unsigned t = 0; t < num_threads; ++t)
        ts.emplace_back([&, t, b] {
          tIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
          bIdx = dim3(b);
          k(args...);
        });
      for (auto& th : ts) th.join();
    }
  }
};

// Called by every thread right after a __shared__ declaration (run.sh inserts the call): the
// block's first thread to get there fills the variables with 0xff bytes (NaN for float and
// double) before any thread can use them, so that a read of shared memory no thread of the
// block wrote yet is caught instead of seeing the previous block's (or zero) values.
template <class... V>
inline void PoisonShared(V&... v) {
  std::lock_guard<std::mutex> lock(shared_mutex);
  auto one = [](void* p, size_t n) {
    uint64_t& e = shared_epoch[p];
    if (e != block_epoch) std::memset(p, 0xff, n), e = block_epoch;
  };
  (one(static_cast<void*>(&v), sizeof(v)), ...);
}
}  // namespace emu

#define threadIdx (::emu::tIdx)
#define blockIdx (::emu::bIdx)
#define blockDim (::emu::bDim)
#define gridDim (::emu::gDim)

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

template <class T>
inline T __shfl_down_sync(unsigned, T v, int offset) {
  const unsigned tid = emu::Lin(), w = tid / 32, lane = tid % 32;
  emu::slots<T>[tid] = v;
  emu::warp_barriers[w]->arrive_and_wait();
  const T r = (lane + offset < 32 && tid + offset < emu::num_threads) ? emu::slots<T>[tid + offset] : v;
  emu::warp_barriers[w]->arrive_and_wait();
  return r;
}
template <class T>
inline T __shfl_sync(unsigned, T v, int src) {
  const unsigned tid = emu::Lin(), w = tid / 32;
  emu::slots<T>[tid] = v;
  emu::warp_barriers[w]->arrive_and_wait();
  const T r = emu::slots<T>[w * 32 + src];
  emu::warp_barriers[w]->arrive_and_wait();
  return r;
}
template <class T>
inline T __ldg(const T* p) { return *p; }

// vector type of the SwitchableNorm coefficients: 16-byte aligned like CUDA's
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorNoDevice = 100 };
typedef struct CUstream_st* cudaStream_t;
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost };
constexpr unsigned cudaStreamNonBlocking = 1;
struct cudaDeviceProp {
  char name[256];
  int major, minor;
  size_t totalGlobalMem;
};
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorName(cudaError_t e) { return e ? "cudaErrorEmu" : "cudaSuccess"; }
inline const char* cudaGetErrorString(cudaError_t e) { return e ? "emulated error" : "no error"; }
inline cudaError_t cudaMalloc(void** p, size_t n) { *p = std::malloc(n); return cudaSuccess; }
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc(reinterpret_cast<void**>(p), n); }
inline cudaError_t cudaFree(void* p) { std::free(p); return cudaSuccess; }
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { std::memcpy(d, s, n); return cudaSuccess; }
inline cudaError_t cudaMemset(void* d, int v, size_t n) { std::memset(d, v, n); return cudaSuccess; }
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { *s = nullptr; return cudaSuccess; }
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamGetDevice(cudaStream_t, int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::strcpy(p->name, "CPU emulation"); p->major = 0; p->minor = 0; p->totalGlobalMem = 0; return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) { *v = 0; return cudaSuccess; }
inline cudaError_t cudaRuntimeGetVersion(int* v) { *v = 0; return cudaSuccess; }
