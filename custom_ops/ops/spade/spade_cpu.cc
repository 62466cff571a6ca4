// CPU execution-provider wrapper of normexport::SPADE: mode 0 splits the flat
// element range, mode 1 the N*C planes, across ORT's intra-op thread pool. Outputs of at least
// stream::ThresholdBytes() are written with streaming stores (normexport/cpu_stream.h).
#include <cstdint>

#include "normexport/cpu_parallel.h"
#include "normexport/cpu_stream.h"
#include "spade/spade_core.h"
#include "spade/spade_op.h"

namespace normexport {
namespace spade {

template <typename T>
OrtStatus* ComputeCpu(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, a, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;  // empty tensor: empty output
    Tensors<T> t{static_cast<const T*>(p.x),
                       static_cast<const T*>(p.gamma_map),
                       static_cast<const T*>(p.beta_map),
                       static_cast<const T*>(p.running_mean),
                       static_cast<const T*>(p.running_var),
                       static_cast<T*>(p.y),
                       p.C,
                       p.plane_size,
                       a.eps};
    t.nt = stream::UseNt(p.num_elements * static_cast<int64_t>(sizeof(T)));
    if (a.mode == 0) {
      ParallelRanges(kc, p.num_elements, MinUnitsPerTask(1),
                     [&t](int64_t begin, int64_t end) {
                       spade_batch_elements<T>(t, begin, end);
                       if (t.nt) stream::Fence();
                     });
    } else {
      ParallelRanges(kc, p.num_planes, MinUnitsPerTask(p.plane_size),
                     [&t](int64_t begin, int64_t end) {
                       spade_instance_planes<T>(t, begin, end);
                       if (t.nt) stream::Fence();
                     });
    }
    return nullptr;
  });
}

template OrtStatus* ComputeCpu<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<double>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace spade
}  // namespace normexport
