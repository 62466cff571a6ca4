// CPU execution-provider wrapper of normexport::FilterResponseNorm.
// Splits the N*C planes into tasks run on ORT's intra-op thread pool. Each plane is read twice
// back to back (the second read hits cache); outputs of at least stream::ThresholdBytes() are
// written with streaming stores (normexport/cpu_stream.h). The core runs compiled for AVX2 + FMA
// when the CPU has them (chosen once), else for baseline x86-64.
#include <algorithm>
#include <cstdint>

#include "filter_response_norm/frn_core.h"
#include "filter_response_norm/frn_op.h"
#include "normexport/cpu_stream.h"

namespace normexport {
namespace frn {
namespace {

// A task should touch at least this many elements so scheduling overhead stays small.
constexpr int64_t kMinElementsPerTask = int64_t{1} << 15;
// Upper bound on tasks: enough for load balancing on large machines.
constexpr int64_t kMaxTasks = 1024;

// ---- run-time ISA dispatch: the core compiled for baseline x86-64 and again for AVX2 + FMA ----
template <typename T>
using PlanesFn = void (*)(const T*, T*, const T*, const T*, const T*, int64_t, int64_t, PlaneRange, float, bool,
                          bool) noexcept;
template <typename T>
void PlanesBase(const T* x, T* y, const T* g, const T* b, const T* t, int64_t c, int64_t s, PlaneRange r, float eps,
                bool tlu, bool nt) noexcept {
  filter_response_norm_planes<T>(x, y, g, b, t, c, s, r, eps, tlu, nt);
}
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define NX_FRN_AVX2 1
template <typename T>
__attribute__((target("avx2,fma"))) void PlanesAvx2(const T* x, T* y, const T* g, const T* b, const T* t, int64_t c,
                                                    int64_t s, PlaneRange r, float eps, bool tlu, bool nt) noexcept {
  filter_response_norm_planes<T>(x, y, g, b, t, c, s, r, eps, tlu, nt);
}
#endif
template <typename T>
PlanesFn<T> Core() noexcept {
#if defined(NX_FRN_AVX2)
  static const bool avx2 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  if (avx2) return &PlanesAvx2<T>;
#endif
  return &PlanesBase<T>;
}

template <typename T>
struct CpuJob {
  const T* x;
  T* y;
  const T* gamma;
  const T* beta;
  const T* tau;
  int64_t C, plane_size, num_planes, planes_per_task;
  float eps;
  bool tlu, nt;
  PlanesFn<T> fn;

  void Run(int64_t task) const noexcept {
    const int64_t begin = task * planes_per_task;
    const int64_t end = std::min(num_planes, begin + planes_per_task);
    if (begin < end) fn(x, y, gamma, beta, tau, C, plane_size, {begin, end}, eps, tlu, nt);
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
    if (p.num_elements == 0) return nullptr;  // empty tensor: empty output

    const int64_t min_planes = std::max<int64_t>(1, (kMinElementsPerTask + p.plane_size - 1) / p.plane_size);
    int64_t num_tasks = (p.num_planes + min_planes - 1) / min_planes;
    num_tasks = std::max<int64_t>(1, std::min(num_tasks, kMaxTasks));
    const int64_t planes_per_task = (p.num_planes + num_tasks - 1) / num_tasks;
    num_tasks = (p.num_planes + planes_per_task - 1) / planes_per_task;

    CpuJob<T> job{static_cast<const T*>(p.x), static_cast<T*>(p.y), static_cast<const T*>(p.gamma),
                  static_cast<const T*>(p.beta), static_cast<const T*>(p.tau), p.C, p.plane_size,
                  p.num_planes, planes_per_task, a.eps, a.tlu,
                  stream::UseNt(p.num_elements * static_cast<int64_t>(sizeof(T))), Core<T>()};
    if (num_tasks == 1) {
      job.Run(0);
    } else {
      // One batch per task; ORT runs them on the session's intra-op pool
      // (sequentially when intra_op_num_threads == 1).
      kc.ParallelFor(&CpuJob<T>::RunTask, static_cast<size_t>(num_tasks), static_cast<size_t>(num_tasks), &job);
    }
    return nullptr;
  });
}

template OrtStatus* ComputeCpu<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<double>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace frn
}  // namespace normexport
