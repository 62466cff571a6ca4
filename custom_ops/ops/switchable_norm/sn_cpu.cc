// CPU execution-provider wrapper of normexport::SwitchableNorm: plane
// statistics split over the N*C planes, mixing over the N samples, then the
// per-plane multiply-add over the planes, on ORT's intra-op thread pool.
#include <cstdint>
#include <vector>

#include "normexport/cpu_parallel.h"
#include "switchable_norm/sn_core.h"
#include "switchable_norm/sn_op.h"

namespace normexport {
namespace switchable_norm {

template <typename T>
OrtStatus* ComputeCpu(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, a, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;  // empty tensor: empty output

    std::vector<double> scratch(static_cast<size_t>(2 * p.num_planes));
    const int64_t k = p.num_branches;
    Tensors<T> t{static_cast<const T*>(p.x),
                 static_cast<const T*>(p.scale),
                 static_cast<const T*>(p.bias),
                 static_cast<const T*>(p.running_mean),
                 static_cast<const T*>(p.running_var),
                 static_cast<T*>(p.y),
                 p.C,
                 p.plane_size,
                 a.eps,
                 softmax_weights(static_cast<const T*>(p.mean_weight), k, p.has_in, a.using_bn),
                 softmax_weights(static_cast<const T*>(p.var_weight), k, p.has_in, a.using_bn),
                 scratch.data(),
                 scratch.data() + p.num_planes};

    const int64_t planes_per_task = MinUnitsPerTask(p.plane_size);
    ParallelRanges(kc, p.num_planes, planes_per_task,
                   [&t](int64_t begin, int64_t end) { plane_stats<T>(t, begin, end); });
    ParallelRanges(kc, p.N, MinUnitsPerTask(p.C, int64_t{1} << 12),
                   [&t](int64_t begin, int64_t end) { mix_samples<T>(t, begin, end); });
    ParallelRanges(kc, p.num_planes, planes_per_task,
                   [&t](int64_t begin, int64_t end) { apply_planes<T>(t, begin, end); });
    return nullptr;
  });
}

template OrtStatus* ComputeCpu<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<double>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace switchable_norm
}  // namespace normexport
