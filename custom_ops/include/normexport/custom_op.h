// Generic OrtCustomOp for kernels whose inputs and output all have one element
// type T, instantiated per (kernel, T, execution provider) in src/register.cc.
//
// A kernel template K<T, Ep> provides:
//   static constexpr const char* kName;          // op type, e.g. "FilterResponseNorm"
//   static constexpr size_t kNumInputs, kNumOutputs;
//   static OrtStatus* Create(const OrtKernelInfo*, K** out);   // validate attrs, never throw
//   OrtStatus* ComputeV2(OrtKernelContext*);                   // never throw
#pragma once

#include <onnxruntime_cxx_api.h>

#include "normexport/ort_utils.h"

namespace normexport {

inline constexpr const char* kDomain = "normexport";
inline constexpr int kOpVersion = 1;

enum class Ep { kCpu, kCuda };

// The kernel of every normexport op: its state is the node context (for messages) and the
// attributes validated once at creation. An op describes itself with a traits struct:
//   static constexpr const char* kName, *kFullName;  size_t kNumInputs, kNumOutputs;
//   using Attrs = ...;
//   ReadAttrs: OrtStatus* (*)(const OrtKernelInfo*, const NodeContext&, Attrs*) noexcept;
//   Cpu<T>, Cuda<T>: OrtStatus* (*)(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept
//     (function pointers to the op's compute functions; Cuda<T> is only used in CUDA builds).
// and exposes `template <typename T, Ep E> using XKernel = AttrKernel<XOp, T, E>;` for the
// op table in src/register.cc.
template <class Op, typename T, Ep E>
class AttrKernel {
 public:
  static constexpr const char* kName = Op::kName;
  static constexpr size_t kNumInputs = Op::kNumInputs;
  static constexpr size_t kNumOutputs = Op::kNumOutputs;

  static OrtStatus* Create(const OrtKernelInfo* info, AttrKernel** out) noexcept {
    *out = nullptr;
    try {
      NodeContext node = NodeContext::FromKernelInfo(info, Op::kFullName);
      typename Op::Attrs attrs;
      if (OrtStatus* st = Op::ReadAttrs(info, node, &attrs)) return st;
      *out = new AttrKernel(std::move(node), attrs);
      return nullptr;
    } catch (...) {
      return MakeStatus(ORT_FAIL, StrCat(Op::kFullName, ": failed to create the kernel"));
    }
  }

  OrtStatus* ComputeV2(OrtKernelContext* context) noexcept {
    if constexpr (E == Ep::kCpu) {
      return Op::template Cpu<T>(node_, attrs_, context);
    } else {
      return Op::template Cuda<T>(node_, attrs_, context);
    }
  }

 private:
  AttrKernel(NodeContext node, typename Op::Attrs attrs) : node_(std::move(node)), attrs_(attrs) {}
  NodeContext node_;
  typename Op::Attrs attrs_;
};

template <template <typename, Ep> class K, typename T, Ep E>
struct SameTypeOp : Ort::CustomOpBase<SameTypeOp<K, T, E>, K<T, E>, /*WithStatus=*/true> {
  using Kernel = K<T, E>;

  SameTypeOp() {
    // opset range of the op in the normexport domain: [kOpVersion, latest]
    this->start_ver_ = kOpVersion;
  }

  const char* GetName() const { return Kernel::kName; }
  const char* GetExecutionProviderType() const { return E == Ep::kCuda ? "CUDAExecutionProvider" : nullptr; }

  size_t GetInputTypeCount() const { return Kernel::kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t /*index*/) const { return OnnxType<T>::value; }
  size_t GetOutputTypeCount() const { return Kernel::kNumOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return OnnxType<T>::value; }

  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** op_kernel) const {
    *op_kernel = nullptr;
    try {
      Kernel* k = nullptr;
      if (OrtStatus* st = Kernel::Create(info, &k)) return st;
      *op_kernel = k;
      return nullptr;
    } catch (const std::exception& e) {
      return MakeStatus(ORT_FAIL, StrCat(kDomain, "::", Kernel::kName, ": kernel creation failed: ", e.what()));
    } catch (...) {
      return MakeStatus(ORT_FAIL, StrCat(kDomain, "::", Kernel::kName, ": kernel creation failed"));
    }
  }
};

}  // namespace normexport
