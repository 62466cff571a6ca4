// CPU execution-provider wrapper of normexport::AdaIN.
// Splits the N*C planes into tasks run on ORT's intra-op thread pool; outputs of at least
// stream::ThresholdBytes() are written with streaming stores (normexport/cpu_stream.h). The core
// runs compiled for AVX2 + FMA when the CPU has them (chosen once), else for baseline x86-64.
#include <algorithm>
#include <cstdint>

#include "adain/adain_core.h"
#include "adain/adain_op.h"
#include "normexport/cpu_stream.h"

namespace normexport {
namespace adain {
namespace {

// A task should touch at least this many elements so scheduling overhead stays small.
constexpr int64_t kMinElementsPerTask = int64_t{1} << 15;
constexpr int64_t kMaxTasks = 1024;

// ---- run-time ISA dispatch: the core compiled for baseline x86-64 and again for AVX2 + FMA ----
template <typename T>
using PlanesFn = void (*)(const T*, const T*, T*, int64_t, int64_t, PlaneRange, float, float, bool) noexcept;
template <typename T>
void PlanesBase(const T* c, const T* s, T* y, int64_t cp, int64_t sp, PlaneRange r, float eps, float alpha,
                bool nt) noexcept {
  adain_planes<T>(c, s, y, cp, sp, r, eps, alpha, nt);
}
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define NX_ADAIN_AVX2 1
template <typename T>
__attribute__((target("avx2,fma"))) void PlanesAvx2(const T* c, const T* s, T* y, int64_t cp, int64_t sp,
                                                    PlaneRange r, float eps, float alpha, bool nt) noexcept {
  adain_planes<T>(c, s, y, cp, sp, r, eps, alpha, nt);
}
#endif
template <typename T>
PlanesFn<T> Core() noexcept {
#if defined(NX_ADAIN_AVX2)
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
  const T* content;
  const T* style;
  T* y;
  int64_t content_plane, style_plane, num_planes, planes_per_task;
  float eps, alpha;
  bool nt;
  PlanesFn<T> fn;

  void Run(int64_t task) const noexcept {
    const int64_t begin = task * planes_per_task;
    const int64_t end = std::min(num_planes, begin + planes_per_task);
    if (begin < end) fn(content, style, y, content_plane, style_plane, {begin, end}, eps, alpha, nt);
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
    if (OrtStatus* st = Prepare(kc, node, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;  // empty content: empty output

    // content is read twice, style once, y written once
    const int64_t per_plane = std::max<int64_t>(1, 2 * p.content_plane + p.style_plane);
    const int64_t min_planes = std::max<int64_t>(1, (kMinElementsPerTask + per_plane - 1) / per_plane);
    int64_t num_tasks = (p.num_planes + min_planes - 1) / min_planes;
    num_tasks = std::max<int64_t>(1, std::min(num_tasks, kMaxTasks));
    const int64_t planes_per_task = (p.num_planes + num_tasks - 1) / num_tasks;
    num_tasks = (p.num_planes + planes_per_task - 1) / planes_per_task;

    CpuJob<T> job{static_cast<const T*>(p.content), static_cast<const T*>(p.style), static_cast<T*>(p.y),
                  p.content_plane, p.style_plane, p.num_planes, planes_per_task, a.eps, a.alpha,
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

}  // namespace adain
}  // namespace normexport
