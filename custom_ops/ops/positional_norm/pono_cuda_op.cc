// CUDA execution-provider wrapper of normexport::PositionalNorm (plain C++, no
// CUDA headers). Compiled to nothing unless NORMEXPORT_WITH_CUDA.
#ifdef NORMEXPORT_WITH_CUDA

#include "positional_norm/pono_cuda.h"
#include "positional_norm/pono_op.h"

namespace normexport {
namespace pono {

template <typename T>
OrtStatus* ComputeCuda(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, a, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;
    void* stream = kc.GetGPUComputeStream();
    const int err = LaunchPositionalNorm<T>(stream, static_cast<const T*>(p.x), static_cast<T*>(p.y),
                                            static_cast<T*>(p.mean), static_cast<T*>(p.std), p.N, p.C,
                                            p.positions, a.eps, a.unbiased);
    if (err != 0) {
      return CudaErrorStatus(node, err,
                             StrCat("CUDA kernel launch failed (", OnnxType<T>::name, ", X shape ",
                                    ShapeToString(p.x_shape), ")"));
    }
    return nullptr;
  });
}

template OrtStatus* ComputeCuda<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCuda<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace pono
}  // namespace normexport

#endif  // NORMEXPORT_WITH_CUDA
