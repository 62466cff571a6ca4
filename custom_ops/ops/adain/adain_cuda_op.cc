// CUDA execution-provider wrapper of normexport::AdaIN (plain C++, no CUDA
// headers), both layouts: channels first (adain_cuda.cu) and channels last
// (adain_nhwc_cuda.cu). Compiled to nothing unless NORMEXPORT_WITH_CUDA.
#ifdef NORMEXPORT_WITH_CUDA

#include "adain/adain_cuda.h"
#include "adain/adain_op.h"
#include "normexport/nhwc_scratch.h"

namespace normexport {
namespace adain {

template <typename T>
OrtStatus* ComputeCuda(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, OnnxType<T>::value, &p, a.channels_last)) return st;
    if (p.num_elements == 0) return nullptr;
    void* stream = kc.GetGPUComputeStream();
    const T* content = static_cast<const T*>(p.content);
    const T* style = static_cast<const T*>(p.style);
    T* y = static_cast<T*>(p.y);
    int err = 0;
    if (p.channels_last) {  // split-row statistics need device scratch
      const size_t bytes = AdaINNhwcScratchBytes(p.N, p.C, p.content_plane, p.style_plane);
      DeviceScratch scratch(kc, kc.GetInput(0), bytes);
      if (bytes > 0 && scratch.get() == nullptr)
        return node.Error(ORT_FAIL, "could not allocate ", bytes, " bytes of device scratch");
      err = LaunchAdaINNhwc<T>(stream, content, style, y, p.N, p.C, p.content_plane, p.style_plane, a.eps, a.alpha,
                               scratch.get());
    } else {
      err = LaunchAdaIN<T>(stream, content, style, y, p.num_planes, p.content_plane, p.style_plane, a.eps, a.alpha);
    }
    if (err != 0) {
      return CudaErrorStatus(node, err,
                             StrCat("CUDA kernel launch failed (", OnnxType<T>::name, ", content shape ",
                                    ShapeToString(p.content_shape), ", style shape ",
                                    ShapeToString(p.style_shape), p.channels_last ? ", channels_last" : "", ")"));
    }
    return nullptr;
  });
}

template OrtStatus* ComputeCuda<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCuda<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace adain
}  // namespace normexport

#endif  // NORMEXPORT_WITH_CUDA
