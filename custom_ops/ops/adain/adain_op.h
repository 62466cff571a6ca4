// normexport::AdaIN (domain "normexport", version 1): ORT kernel shared by the
// CPU and CUDA execution providers.
//
//   inputs : content (N, C, D1..Dk), style (N, C, E1..Ek): same rank (>= 3), N and C;
//            spatial sizes may differ. With channels_last=1 content (N, D1..Dk, C), style
//            (N, E1..Ek, C) (channels the LAST dim). Element type T in {float, float16}; the
//            CPU EP also serves double (see src/register.cc for why).
//   attrs  : epsilon float = 1e-5 (finite, >= 0); alpha float = 1.0 (in [0, 1]);
//            channels_last int = 0 (0 or 1): the layout of content, style and Y
//   output : Y, shape, layout and type of content
//   math   : per (n, c) plane, biased variance over the spatial dims,
//            sigma(t) = sqrt(var(t) + epsilon),
//            Y = alpha * (sigma(style) (content - mean(content)) / sigma(content) + mean(style))
//                + (1 - alpha) * content
//   compute: channels first: ComputeCpu (adain_cpu.cc, adain_core.h); channels last:
//            ComputeCpuNhwc (adain_cpu_nhwc.cc, adain_nhwc_core.h); CUDA: ComputeCuda
//            (adain_cuda_op.cc) launches the kernel of the layout (adain_cuda.cu,
//            adain_nhwc_cuda.cu).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "normexport/custom_op.h"
#include "normexport/ort_utils.h"

namespace normexport {
namespace adain {

inline constexpr const char* kOpFullName = "normexport::AdaIN";

struct Attrs {
  float eps = 1e-5f;
  float alpha = 1.0f;
  bool channels_last = false;  // content / style are (N, D1..Dk, C)
};

struct Problem {
  std::vector<int64_t> content_shape, style_shape;
  bool channels_last = false;  // (N, plane, C) instead of (N, C, plane)
  int64_t N = 0, C = 0, content_plane = 0, style_plane = 0, num_planes = 0, num_elements = 0;
  const void* content = nullptr;
  const void* style = nullptr;
  void* y = nullptr;
};

inline OrtStatus* ReadAttrs(const OrtKernelInfo* info, const NodeContext& node, Attrs* a) noexcept {
  float eps = 1e-5f;
  if (OrtStatus* st = GetNonNegativeAttr(info, node, "epsilon", 1e-5f, &eps)) return st;
  float alpha = 1.0f;
  if (OrtStatus* st = GetAttrOr(info, node, "alpha", 1.0f, &alpha)) return st;
  if (!(alpha >= 0.0f && alpha <= 1.0f))
    return node.InvalidArgument("attribute alpha (content-style trade-off) must be in [0, 1], got ", alpha);
  bool channels_last = false;
  if (OrtStatus* st = GetFlagAttr(info, node, "channels_last", false, &channels_last)) return st;
  a->eps = eps;
  a->alpha = alpha;
  a->channels_last = channels_last;
  return nullptr;
}

// Validates the inputs and allocates Y. p->num_elements may be 0 (empty output, nothing to do).
// channels_last: the inputs are (N, D1..Dk, C).
inline OrtStatus* Prepare(const Ort::KernelContext& kc, const NodeContext& node, ONNXTensorElementDataType type,
                          Problem* p, bool channels_last = false) {
  TensorInfo x, s;
  if (OrtStatus* st = GetInputTensor(kc, node, 0, "content", type, &x)) return st;
  const char* layout = channels_last ? "(N, D1, ..., Dk, C) (channels_last=1)" : "(N, C, D1, ..., Dk)";
  if (OrtStatus* st = CheckRankAtLeast(node, 0, "content", x.shape, 3, layout)) return st;
  if (OrtStatus* st = GetInputTensor(kc, node, 1, "style", type, &s)) return st;
  if (s.shape.size() != x.shape.size())
    return node.InvalidArgument("input style ('", node.InputName(1), "') must have the rank of content (",
                                x.shape.size(), "), got rank ", s.shape.size(), " (content shape ",
                                ShapeToString(x.shape), ", style shape ", ShapeToString(s.shape), ")");
  const size_t rank = x.shape.size();
  const size_t c_axis = channels_last ? rank - 1 : 1;
  for (size_t d : {size_t{0}, c_axis}) {
    if (s.shape[d] != x.shape[d])
      return node.InvalidArgument("style ", d == 0 ? "batch N" : "channels C", "=", s.shape[d],
                                  " does not match content ", d == 0 ? "batch N" : "channels C", "=",
                                  x.shape[d], " (content shape ", ShapeToString(x.shape), ", style shape ",
                                  ShapeToString(s.shape), channels_last ? ", channels_last=1: C is the last dim" : "",
                                  ")");
  }
  p->content_shape = x.shape;
  p->style_shape = s.shape;
  p->channels_last = channels_last;
  p->N = x.shape[0];
  p->C = x.shape[c_axis];
  p->content_plane = 1;
  p->style_plane = 1;
  for (size_t i = 1; i < rank; ++i) {
    if (i == c_axis) continue;
    p->content_plane *= x.shape[i];
    p->style_plane *= s.shape[i];
  }
  p->num_planes = p->N * p->C;
  p->num_elements = x.size;
  p->content = x.value.GetTensorRawData();
  p->style = s.value.GetTensorRawData();
  Ort::UnownedValue y = kc.GetOutput(0, x.shape);
  p->y = y.GetTensorMutableRawData();
  return nullptr;
}

// Per-EP compute functions (adain_cpu.cc, adain_cpu_nhwc.cc, adain_cuda_op.cc). ComputeCpu serves
// channels first, ComputeCpuNhwc channels last; ComputeCuda both.
template <typename T>
OrtStatus* ComputeCpu(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept;
template <typename T>
OrtStatus* ComputeCpuNhwc(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept;
template <typename T>
OrtStatus* ComputeCpuLayout(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return a.channels_last ? ComputeCpuNhwc<T>(node, a, context) : ComputeCpu<T>(node, a, context);
}
template <typename T>
OrtStatus* ComputeCuda(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept;

// The op's traits for AttrKernel (include/normexport/custom_op.h).
struct AdaINOp {
  static constexpr const char* kName = "AdaIN";
  static constexpr const char* kFullName = kOpFullName;
  static constexpr size_t kNumInputs = 2, kNumOutputs = 1;
  using Attrs = normexport::adain::Attrs;
  static constexpr auto ReadAttrs = &normexport::adain::ReadAttrs;
  template <typename T> static constexpr auto Cpu = &ComputeCpuLayout<T>;
  template <typename T> static constexpr auto Cuda = &ComputeCuda<T>;
};

template <typename T, Ep E>
using AdaINKernel = AttrKernel<AdaINOp, T, E>;

}  // namespace adain
}  // namespace normexport
