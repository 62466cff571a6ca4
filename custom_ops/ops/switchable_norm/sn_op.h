// normexport::SwitchableNorm (domain "normexport", version 1): ORT kernel shared
// by the CPU and CUDA execution providers (contract: normexport/ops/switchable.py).
//
//   inputs : X (N, C, D1..Dk), k >= 0; scale, bias, running_mean, running_var: C
//            elements each (running statistics read only when using_bn == 1);
//            mean_weight, var_weight: K logits each, K = (rank >= 3) + 1 + using_bn
//            (branches IN, LN, BN in this order). All of element type T in
//            {float, float16}; the CPU EP also serves double.
//   attrs  : epsilon float = 1e-5 (finite, >= 0); using_bn int = 1 (0 or 1)
//   output : Y, shape and type of X
//   math   : mu = sum_k softmax(mean_weight)_k mu_k, var = sum_k softmax(var_weight)_k var_k
//            Y = scale[c] * (X - mu) / sqrt(var + epsilon) + bias[c]
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "normexport/custom_op.h"
#include "normexport/ort_utils.h"

namespace normexport {
namespace switchable_norm {

inline constexpr const char* kOpFullName = "normexport::SwitchableNorm";

struct Attrs {
  float eps = 1e-5f;
  bool using_bn = true;
};

struct Problem {
  std::vector<int64_t> x_shape;
  int64_t N = 0, C = 0, plane_size = 0, num_planes = 0, num_elements = 0, num_branches = 0;
  bool has_in = false;
  const void* x = nullptr;
  const void* scale = nullptr;
  const void* bias = nullptr;
  const void* running_mean = nullptr;
  const void* running_var = nullptr;
  const void* mean_weight = nullptr;
  const void* var_weight = nullptr;
  void* y = nullptr;
  Ort::ConstValue x_value{nullptr};  // for the CUDA scratch allocator's memory info
};

inline OrtStatus* ReadAttrs(const OrtKernelInfo* info, const NodeContext& node, Attrs* a) noexcept {
  float eps = 1e-5f;
  if (OrtStatus* st = GetNonNegativeAttr(info, node, "epsilon", 1e-5f, &eps)) return st;
  bool using_bn = true;
  if (OrtStatus* st = GetFlagAttr(info, node, "using_bn", true, &using_bn)) return st;
  a->eps = eps;
  a->using_bn = using_bn;
  return nullptr;
}

inline OrtStatus* Prepare(const Ort::KernelContext& kc, const NodeContext& node, const Attrs& a,
                          ONNXTensorElementDataType type, Problem* p) {
  TensorInfo x;
  if (OrtStatus* st = GetInputTensor(kc, node, 0, "X", type, &x)) return st;
  if (OrtStatus* st = CheckRankAtLeast(node, 0, "X", x.shape, 2, "(N, C, D1, ..., Dk)")) return st;
  p->x_shape = x.shape;
  p->N = x.shape[0];
  p->C = x.shape[1];
  p->plane_size = 1;
  for (size_t i = 2; i < x.shape.size(); ++i) p->plane_size *= x.shape[i];
  p->num_planes = p->N * p->C;
  p->num_elements = x.size;
  p->has_in = x.shape.size() >= 3;
  p->num_branches = (p->has_in ? 1 : 0) + 1 + (a.using_bn ? 1 : 0);

  static const char* const kLabels[] = {"X",           "scale",      "bias",      "running_mean",
                                        "running_var", "mean_weight", "var_weight"};
  const void* data[7] = {};
  const std::string because = StrCat("input X has C=", p->C, " channels (X shape ", ShapeToString(x.shape), ")");
  const std::string branches =
      StrCat("X has rank ", x.shape.size(), " and using_bn=", a.using_bn ? 1 : 0, ", so there are ", p->num_branches,
             " branches (", p->has_in ? "IN, " : "", "LN", a.using_bn ? ", BN" : "", ")");
  for (size_t i = 1; i < 7; ++i) {
    TensorInfo t;
    if (OrtStatus* st = GetInputTensor(kc, node, i, kLabels[i], type, &t)) return st;
    if (i <= 4) {
      if (OrtStatus* st = CheckElementCount(node, i, kLabels[i], t.size, p->C, because)) return st;
    } else {
      if (OrtStatus* st = CheckElementCount(node, i, kLabels[i], t.size, p->num_branches, branches)) return st;
    }
    data[i] = t.value.GetTensorRawData();
  }
  p->x = x.value.GetTensorRawData();
  p->x_value = x.value;
  p->scale = data[1];
  p->bias = data[2];
  p->running_mean = data[3];
  p->running_var = data[4];
  p->mean_weight = data[5];
  p->var_weight = data[6];
  Ort::UnownedValue y = kc.GetOutput(0, x.shape);
  p->y = y.GetTensorMutableRawData();
  return nullptr;
}

template <typename T>
OrtStatus* ComputeCpu(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept;
template <typename T>
OrtStatus* ComputeCuda(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept;

// The op's traits for AttrKernel (include/normexport/custom_op.h).
struct SwitchableNormOp {
  static constexpr const char* kName = "SwitchableNorm";
  static constexpr const char* kFullName = kOpFullName;
  static constexpr size_t kNumInputs = 7, kNumOutputs = 1;
  using Attrs = normexport::switchable_norm::Attrs;
  static constexpr auto ReadAttrs = &normexport::switchable_norm::ReadAttrs;
  template <typename T> static constexpr auto Cpu = &ComputeCpu<T>;
  template <typename T> static constexpr auto Cuda = &ComputeCuda<T>;
};

template <typename T, Ep E>
using SwitchableNormKernel = AttrKernel<SwitchableNormOp, T, E>;

}  // namespace switchable_norm
}  // namespace normexport
