// CUDA execution-provider wrapper of normexport::SwitchableNorm (plain C++, no
// CUDA headers). Compiled to nothing unless NORMEXPORT_WITH_CUDA.
//
// Scratch (per-plane statistics and coefficients) comes from ORT's allocator for
// X's device. It is handed back right after the launches: ORT's CUDA allocator
// reuses memory in compute-stream order, and every later user of it runs on the
// same stream, after these kernels.
#ifdef NORMEXPORT_WITH_CUDA

#include "switchable_norm/sn_cuda.h"
#include "switchable_norm/sn_op.h"

namespace normexport {
namespace switchable_norm {
namespace {

class DeviceScratch {
 public:
  DeviceScratch(OrtAllocator* allocator, size_t bytes) : allocator_(allocator) {
    ptr_ = allocator_->Alloc(allocator_, bytes);
  }
  ~DeviceScratch() {
    if (ptr_ != nullptr) allocator_->Free(allocator_, ptr_);
    Ort::GetApi().ReleaseAllocator(allocator_);
  }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  void* get() const { return ptr_; }

 private:
  OrtAllocator* allocator_;
  void* ptr_ = nullptr;
};

}  // namespace

template <typename T>
OrtStatus* ComputeCuda(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, a, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;
    void* stream = kc.GetGPUComputeStream();
    const Ort::ConstMemoryInfo mem = p.x_value.GetTensorMemoryInfo();
    const size_t bytes = CudaScratchBytes(p.num_planes);
    DeviceScratch scratch(kc.GetAllocator(*mem), bytes);
    if (scratch.get() == nullptr)
      return node.Error(ORT_FAIL, "could not allocate ", bytes, " bytes of device scratch");
    const int err = LaunchSwitchableNorm<T>(
        stream, static_cast<const T*>(p.x), static_cast<const T*>(p.scale), static_cast<const T*>(p.bias),
        static_cast<const T*>(p.running_mean), static_cast<const T*>(p.running_var),
        static_cast<const T*>(p.mean_weight), static_cast<const T*>(p.var_weight), static_cast<T*>(p.y), p.N, p.C,
        p.plane_size, p.has_in, a.using_bn, a.eps, scratch.get());
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

}  // namespace switchable_norm
}  // namespace normexport

#endif  // NORMEXPORT_WITH_CUDA
