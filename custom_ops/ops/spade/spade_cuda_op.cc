// CUDA execution-provider wrapper of normexport::SPADE (plain C++, no CUDA
// headers). Compiled to nothing unless NORMEXPORT_WITH_CUDA.
#ifdef NORMEXPORT_WITH_CUDA

#include "spade/spade_cuda.h"
#include "spade/spade_op.h"

namespace normexport {
namespace spade {

template <typename T>
OrtStatus* ComputeCuda(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, a, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;
    void* stream = kc.GetGPUComputeStream();
    const int err = LaunchSpade<T>(stream, static_cast<const T*>(p.x), static_cast<const T*>(p.gamma_map),
                                   static_cast<const T*>(p.beta_map), static_cast<const T*>(p.running_mean),
                                   static_cast<const T*>(p.running_var), static_cast<T*>(p.y), p.num_planes, p.C,
                                   p.plane_size, a.eps, a.mode);
    if (err != 0) {
      return CudaErrorStatus(node, err,
                             StrCat("CUDA kernel launch failed (", OnnxType<T>::name, ", X shape ",
                                    ShapeToString(p.x_shape), ", mode ", a.mode, ")"));
    }
    return nullptr;
  });
}

template OrtStatus* ComputeCuda<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCuda<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace spade
}  // namespace normexport

#endif  // NORMEXPORT_WITH_CUDA
