// CUDA execution-provider wrapper of normexport::FilterResponseNorm (plain
// C++, no CUDA headers), both layouts: channels first (frn_cuda.cu) and channels last
// (frn_nhwc_cuda.cu). Compiled to nothing unless NORMEXPORT_WITH_CUDA.
#ifdef NORMEXPORT_WITH_CUDA

#include "filter_response_norm/frn_cuda.h"
#include "filter_response_norm/frn_op.h"
#include "normexport/nhwc_scratch.h"

namespace normexport {
namespace frn {

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
    const T* gamma = static_cast<const T*>(p.gamma);
    const T* beta = static_cast<const T*>(p.beta);
    const T* tau = static_cast<const T*>(p.tau);
    int err = 0;
    if (p.channels_last) {  // split-row statistics need device scratch
      const size_t bytes = FilterResponseNormNhwcScratchBytes(p.N, p.C, p.plane_size);
      DeviceScratch scratch(kc, kc.GetInput(0), bytes);
      if (bytes > 0 && scratch.get() == nullptr)
        return node.Error(ORT_FAIL, "could not allocate ", bytes, " bytes of device scratch");
      err = LaunchFilterResponseNormNhwc<T>(stream, x, y, gamma, beta, tau, p.N, p.C, p.plane_size, a.eps, a.tlu,
                                            scratch.get());
    } else {
      err = LaunchFilterResponseNorm<T>(stream, x, y, gamma, beta, tau, p.num_planes, p.C, p.plane_size, a.eps,
                                        a.tlu);
    }
    if (err != 0) {
      return CudaErrorStatus(node, err,
                             StrCat("CUDA kernel launch failed (", OnnxType<T>::name, ", X shape ",
                                    ShapeToString(p.x_shape), p.channels_last ? ", channels_last" : "", ")"));
    }
    return nullptr;
  });
}

template OrtStatus* ComputeCuda<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCuda<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace frn
}  // namespace normexport

#endif  // NORMEXPORT_WITH_CUDA
