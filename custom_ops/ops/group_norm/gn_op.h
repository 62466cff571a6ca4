// normexport::GroupNorm (domain "normexport", version 1): ORT kernel shared by the CPU and
// CUDA execution providers. Contract: normexport/ops/groupnorm.py.
//
//   inputs : X (N, C, D1..Dk), k >= 0 (rank 2: one value per channel), or with channels_last=1
//            X (N, D1..Dk, C) (channels the LAST dim); scale, bias with C elements each. All of
//            element type T in {float, float16}; the CPU EP also serves double (see
//            src/register.cc for why).
//   attrs  : num_groups int (required, > 0, divides C); epsilon float = 1e-5 (finite, >= 0);
//            activation int = 0 (0 none, 1 ReLU, 2 SiLU), applied after the affine;
//            channels_last int = 0 (0 or 1): the layout of X (and Y)
//   output : Y, same shape, layout and type as X
//   math   : per sample n and group g of C/G consecutive channels, mean/biased variance over
//            (C/G, D1..Dk); Y[n,c] = act(scale[c] * (X[n,c] - mean) / sqrt(var + eps) + bias[c])
//   compute: channels first: ComputeCpu (gn_cpu.cc, gn_core.h); channels last: ComputeCpuNhwc
//            (gn_cpu_nhwc.cc, gn_nhwc_core.h); CUDA: ComputeCuda (gn_cuda_op.cc) launches the
//            kernel of the layout (gn_cuda.cu, gn_nhwc_cuda.cu).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "normexport/custom_op.h"
#include "normexport/ort_utils.h"

namespace normexport {
namespace gn {

inline constexpr const char* kOpFullName = "normexport::GroupNorm";

struct Attrs {
  int64_t num_groups = 0;
  float eps = 1e-5f;
  int activation = 0;
  bool channels_last = false;  // X is (N, D1..Dk, C)
};

// Everything a compute function needs, validated.
struct Problem {
  std::vector<int64_t> x_shape;
  bool channels_last = false;  // X is (N, spatial, C) instead of (N, C, spatial)
  int64_t N = 0, C = 0, G = 0, spatial = 0, num_groups_total = 0, group_size = 0, num_elements = 0;
  const void* x = nullptr;
  const void* scale = nullptr;
  const void* bias = nullptr;
  void* y = nullptr;
};

inline OrtStatus* ReadAttrs(const OrtKernelInfo* info, const NodeContext& node, Attrs* a) noexcept {
  int64_t groups = 0;
  OrtStatus* st = Ort::GetApi().KernelInfoGetAttribute_int64(info, "num_groups", &groups);
  if (st != nullptr) {
    Ort::GetApi().ReleaseStatus(st);
    if (HasAttribute(info, "num_groups"))
      return node.InvalidArgument("attribute 'num_groups' must be an int (AttributeProto INT)");
    return node.InvalidArgument("attribute 'num_groups' is required (the number of channel groups)");
  }
  if (groups <= 0) return node.InvalidArgument("attribute num_groups must be > 0, got ", groups);
  float eps = 1e-5f;
  if (OrtStatus* s = GetNonNegativeAttr(info, node, "epsilon", 1e-5f, &eps)) return s;
  int64_t act = 0;
  if (OrtStatus* s = GetAttrOr(info, node, "activation", int64_t{0}, &act)) return s;
  if (act < 0 || act > 2)
    return node.InvalidArgument("attribute activation must be 0 (none), 1 (ReLU) or 2 (SiLU), got ", act);
  bool channels_last = false;
  if (OrtStatus* s = GetFlagAttr(info, node, "channels_last", false, &channels_last)) return s;
  a->num_groups = groups;
  a->eps = eps;
  a->activation = static_cast<int>(act);
  a->channels_last = channels_last;
  return nullptr;
}

// Validates the inputs and allocates Y. On success p->num_elements may be 0 (empty tensor):
// the output exists and nothing needs computing.
inline OrtStatus* Prepare(const Ort::KernelContext& kc, const NodeContext& node, const Attrs& a,
                          ONNXTensorElementDataType type, Problem* p) {
  TensorInfo x;
  if (OrtStatus* st = GetInputTensor(kc, node, 0, "X", type, &x)) return st;
  const char* layout = a.channels_last ? "(N, D1, ..., Dk, C) (channels_last=1)" : "(N, C, D1, ..., Dk)";
  if (OrtStatus* st = CheckRankAtLeast(node, 0, "X", x.shape, 2, layout)) return st;
  const size_t rank = x.shape.size();
  const size_t c_axis = a.channels_last ? rank - 1 : 1;
  p->x_shape = x.shape;
  p->channels_last = a.channels_last;
  p->N = x.shape[0];
  p->C = x.shape[c_axis];
  p->G = a.num_groups;
  p->spatial = 1;
  for (size_t i = 1; i < rank; ++i)
    if (i != c_axis) p->spatial *= x.shape[i];
  p->num_elements = x.size;
  if (p->C % p->G != 0) {
    return node.InvalidArgument("num_groups=", p->G, " does not divide the C=", p->C, " channels of input X ('",
                                node.InputName(0), "', shape ", ShapeToString(x.shape),
                                a.channels_last ? ", channels_last=1: C is the last dim" : "",
                                "); C must be a multiple of num_groups");
  }
  p->num_groups_total = p->N * p->G;
  p->group_size = (p->C / p->G) * p->spatial;

  static const char* const kLabels[] = {"X", "scale", "bias"};
  const void* params[3] = {nullptr, nullptr, nullptr};
  for (size_t i = 1; i <= 2; ++i) {
    TensorInfo t;
    if (OrtStatus* st = GetInputTensor(kc, node, i, kLabels[i], type, &t)) return st;
    if (t.size != p->C) {  // the message is only built on failure (Compute stays allocation-light)
      return CheckElementCount(node, i, kLabels[i], t.size, p->C,
                               StrCat("input X has C=", p->C, " channels (X shape ", ShapeToString(x.shape),
                                      a.channels_last ? ", channels_last=1: C is the last dim)" : ")"));
    }
    params[i] = t.value.GetTensorRawData();
  }
  p->x = x.value.GetTensorRawData();
  p->scale = params[1];
  p->bias = params[2];

  Ort::UnownedValue y = kc.GetOutput(0, x.shape);
  p->y = y.GetTensorMutableRawData();
  return nullptr;
}

// Per-EP compute functions (gn_cpu.cc, gn_cpu_nhwc.cc, gn_cuda_op.cc). T: float, half (and
// double on CPU). ComputeCpu serves channels first, ComputeCpuNhwc channels last; ComputeCuda
// both.
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
struct GroupNormOp {
  static constexpr const char* kName = "GroupNorm";
  static constexpr const char* kFullName = kOpFullName;
  static constexpr size_t kNumInputs = 3, kNumOutputs = 1;
  using Attrs = normexport::gn::Attrs;
  static constexpr auto ReadAttrs = &normexport::gn::ReadAttrs;
  template <typename T> static constexpr auto Cpu = &ComputeCpuLayout<T>;
  template <typename T> static constexpr auto Cuda = &ComputeCuda<T>;
};

template <typename T, Ep E>
using GroupNormKernel = AttrKernel<GroupNormOp, T, E>;

}  // namespace gn
}  // namespace normexport
