// CUDA execution-provider wrapper of normexport::GroupNorm (plain C++, no CUDA headers), both
// layouts: channels first (gn_cuda.cu) and channels last (gn_nhwc_cuda.cu).
// Compiled to nothing unless NORMEXPORT_WITH_CUDA.
#ifdef NORMEXPORT_WITH_CUDA

#include "group_norm/gn_cuda.h"
#include "group_norm/gn_op.h"

namespace normexport {
namespace gn {

template <typename T>
OrtStatus* ComputeCuda(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, a, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;
    void* stream = kc.GetGPUComputeStream();
    auto launch = p.channels_last ? &LaunchGroupNormNhwc<T> : &LaunchGroupNorm<T>;
    const int err = launch(stream, static_cast<const T*>(p.x), static_cast<T*>(p.y), static_cast<const T*>(p.scale),
                           static_cast<const T*>(p.bias), p.N, p.C, p.spatial, p.G, a.eps, a.activation);
    if (err != 0) {
      return CudaErrorStatus(node, err,
                             StrCat("CUDA kernel launch failed (", OnnxType<T>::name, ", X shape ",
                                    ShapeToString(p.x_shape), ", num_groups ", p.G,
                                    p.channels_last ? ", channels_last" : "", ")"));
    }
    return nullptr;
  });
}

template OrtStatus* ComputeCuda<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCuda<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace gn
}  // namespace normexport

#endif  // NORMEXPORT_WITH_CUDA
