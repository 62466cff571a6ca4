// CPU execution-provider wrapper of normexport::PositionalNorm.
// Splits the (sample, block of positions) grid into tasks run on ORT's intra-op
// thread pool. Every position is computed the same way whatever the split, so
// results do not depend on the thread count. Outputs of at least stream::ThresholdBytes() are
// written with streaming stores (normexport/cpu_stream.h).
#include <algorithm>
#include <cstdint>

#include "positional_norm/pono_core.h"
#include "normexport/cpu_stream.h"
#include "positional_norm/pono_op.h"

namespace normexport {
namespace pono {
namespace {

constexpr int64_t kMinElementsPerTask = int64_t{1} << 15;
constexpr int64_t kMaxTasks = 128;

// ---- run-time ISA dispatch: the core compiled for baseline x86-64 and again for AVX2 + FMA ----
template <typename T>
using BlocksFn = void (*)(const T*, T*, T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, bool,
                          bool) noexcept;

template <typename T>
void BlocksBase(const T* x, T* y, T* m, T* s, int64_t c, int64_t p, int64_t blk, int64_t bps, int64_t b, int64_t e,
                float eps, bool ub, bool nt) noexcept {
  pono_blocks<T>(x, y, m, s, c, p, blk, bps, b, e, eps, ub, nt);
}
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define NX_PONO_AVX2 1
template <typename T>
__attribute__((target("avx2,fma"))) void BlocksAvx2(const T* x, T* y, T* m, T* s, int64_t c, int64_t p, int64_t blk,
                                                    int64_t bps, int64_t b, int64_t e, float eps, bool ub,
                                                    bool nt) noexcept {
  pono_blocks<T>(x, y, m, s, c, p, blk, bps, b, e, eps, ub, nt);
}
#endif
template <typename T>
BlocksFn<T> Core() noexcept {
#if defined(NX_PONO_AVX2)
  static const bool avx2 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  if (avx2) return &BlocksAvx2<T>;
#endif
  return &BlocksBase<T>;
}

template <typename T>
struct CpuJob {
  const T* x;
  T* y;
  T* mean;
  T* std;
  int64_t C, positions, block, blocks_per_sample, num_blocks, blocks_per_task;
  float eps;
  bool unbiased, nt;
  BlocksFn<T> fn;

  void Run(int64_t task) const noexcept {
    const int64_t begin = task * blocks_per_task;
    const int64_t end = std::min(num_blocks, begin + blocks_per_task);
    if (begin < end)
      fn(x, y, mean, std, C, positions, block, blocks_per_sample, begin, end, eps, unbiased, nt);
    if (nt) stream::Fence();
  }
  static void RunTask(void* job, size_t task) { static_cast<const CpuJob*>(job)->Run(static_cast<int64_t>(task)); }
};

}  // namespace

template <typename T>
OrtStatus* ComputeCpu(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, a, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;  // empty X: empty outputs

    const int64_t block = BlockSize(p.C, p.positions);
    const int64_t blocks_per_sample = (p.positions + block - 1) / block;
    const int64_t num_blocks = p.N * blocks_per_sample;
    const int64_t per_block = std::max<int64_t>(1, p.C * std::min(block, p.positions));
    const int64_t min_blocks = std::max<int64_t>(1, (kMinElementsPerTask + per_block - 1) / per_block);
    int64_t num_tasks = (num_blocks + min_blocks - 1) / min_blocks;
    num_tasks = std::max<int64_t>(1, std::min(num_tasks, kMaxTasks));
    const int64_t blocks_per_task = (num_blocks + num_tasks - 1) / num_tasks;
    num_tasks = (num_blocks + blocks_per_task - 1) / blocks_per_task;

    CpuJob<T> job{static_cast<const T*>(p.x), static_cast<T*>(p.y), static_cast<T*>(p.mean),
                  static_cast<T*>(p.std), p.C, p.positions, block, blocks_per_sample, num_blocks,
                  blocks_per_task, a.eps, a.unbiased,
                  stream::UseNt(p.num_elements * static_cast<int64_t>(sizeof(T))), Core<T>()};
    if (num_tasks == 1) {
      job.Run(0);
    } else {
      kc.ParallelFor(&CpuJob<T>::RunTask, static_cast<size_t>(num_tasks), static_cast<size_t>(num_tasks), &job);
    }
    return nullptr;
  });
}

template OrtStatus* ComputeCpu<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<double>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace pono
}  // namespace normexport
