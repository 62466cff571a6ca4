// CUDA execution-provider wrapper of normexport::GroupNorm (plain C++, no CUDA headers), both
// layouts: channels first (gn_cuda.cu) and channels last (gn_nhwc_cuda.cu).
// Compiled to nothing unless NORMEXPORT_WITH_CUDA.
#ifdef NORMEXPORT_WITH_CUDA

#include "group_norm/gn_cuda.h"
#include "group_norm/gn_op.h"
#include "normexport/nhwc_scratch.h"

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
    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    const T* scale = static_cast<const T*>(p.scale);
    const T* bias = static_cast<const T*>(p.bias);
    int err = 0;
    if (p.channels_last) {  // split-row statistics need device scratch
      const size_t bytes = GroupNormNhwcScratchBytes(p.N, p.C, p.spatial, p.G);
      DeviceScratch scratch(kc, kc.GetInput(0), bytes);
      if (bytes > 0 && scratch.get() == nullptr)
        return node.Error(ORT_FAIL, "could not allocate ", bytes, " bytes of device scratch");
      err = LaunchGroupNormNhwc<T>(stream, x, y, scale, bias, p.N, p.C, p.spatial, p.G, a.eps, a.activation,
                                   scratch.get());
    } else {
      err = LaunchGroupNorm<T>(stream, x, y, scale, bias, p.N, p.C, p.spatial, p.G, a.eps, a.activation);
    }
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
