// CPU execution-provider wrapper of normexport::AdaIN.
// Splits the N*C planes into tasks run on ORT's intra-op thread pool; outputs of at least
// stream::ThresholdBytes() are written with streaming stores (normexport/cpu_stream.h).
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

template <typename T>
struct CpuJob {
  const T* content;
  const T* style;
  T* y;
  int64_t content_plane, style_plane, num_planes, planes_per_task;
  float eps, alpha;
  bool nt;

  void Run(int64_t task) const noexcept {
    const int64_t begin = task * planes_per_task;
    const int64_t end = std::min(num_planes, begin + planes_per_task);
    if (begin < end) adain_planes<T>(content, style, y, content_plane, style_plane, {begin, end}, eps, alpha, nt);
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
                  stream::UseNt(p.num_elements * static_cast<int64_t>(sizeof(T)))};
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
