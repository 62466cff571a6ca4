// Device scratch for the channels-last CUDA launchers (split-row statistics), from ORT's
// allocator for the device of an input (plain C++, no CUDA headers). Handed back when the
// compute function returns: ORT's CUDA allocator reuses memory in compute-stream order and
// every later user of it runs on the same stream, after the kernels that used it.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstddef>

namespace normexport {

class DeviceScratch {
 public:
  // bytes == 0: no allocation, get() == nullptr
  DeviceScratch(const Ort::KernelContext& kc, const Ort::ConstValue& like, size_t bytes) {
    if (bytes == 0) return;
    const Ort::ConstMemoryInfo mem = like.GetTensorMemoryInfo();
    allocator_ = kc.GetAllocator(*mem);
    if (allocator_ != nullptr) ptr_ = allocator_->Alloc(allocator_, bytes);
  }
  ~DeviceScratch() {
    if (allocator_ == nullptr) return;
    if (ptr_ != nullptr) allocator_->Free(allocator_, ptr_);
    Ort::GetApi().ReleaseAllocator(allocator_);
  }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  void* get() const { return ptr_; }

 private:
  OrtAllocator* allocator_ = nullptr;
  void* ptr_ = nullptr;
};

}  // namespace normexport
