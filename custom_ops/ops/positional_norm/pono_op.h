// normexport::PositionalNorm (domain "normexport", version 1): ORT kernel shared
// by the CPU and CUDA execution providers.
//
//   input  : X (N, C, D1..Dk), k >= 1, element type T in {float, float16}; the CPU EP
//            also serves double (see src/register.cc for why)
//   attrs  : epsilon float = 1e-5 (finite, >= 0); unbiased int = 1 (0 or 1; 1 needs C >= 2)
//   outputs: Y (shape of X), Mean and Std (N, 1, D1..Dk), all T
//   math   : per sample n and position p, over the channels:
//            Mean = mean_c X, Std = sqrt(sum_c (X - Mean)^2 / (C - unbiased) + epsilon),
//            Y = (X - Mean) / Std
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "normexport/custom_op.h"
#include "normexport/ort_utils.h"

namespace normexport {
namespace pono {

inline constexpr const char* kOpFullName = "normexport::PositionalNorm";

struct Attrs {
  float eps = 1e-5f;
  bool unbiased = true;
};

struct Problem {
  std::vector<int64_t> x_shape;
  int64_t N = 0, C = 0, positions = 0, num_elements = 0;
  const void* x = nullptr;
  void* y = nullptr;
  void* mean = nullptr;
  void* std = nullptr;
};

inline OrtStatus* ReadAttrs(const OrtKernelInfo* info, const NodeContext& node, Attrs* a) noexcept {
  float eps = 1e-5f;
  if (OrtStatus* st = GetNonNegativeAttr(info, node, "epsilon", 1e-5f, &eps)) return st;
  bool unbiased = true;
  if (OrtStatus* st = GetFlagAttr(info, node, "unbiased", true, &unbiased)) return st;
  a->eps = eps;
  a->unbiased = unbiased;
  return nullptr;
}

// Validates X and allocates the three outputs. p->num_elements may be 0 (empty outputs).
inline OrtStatus* Prepare(const Ort::KernelContext& kc, const NodeContext& node, const Attrs& a,
                          ONNXTensorElementDataType type, Problem* p) {
  TensorInfo x;
  if (OrtStatus* st = GetInputTensor(kc, node, 0, "X", type, &x)) return st;
  if (OrtStatus* st = CheckRankAtLeast(node, 0, "X", x.shape, 3, "(N, C, D1, ..., Dk)")) return st;
  p->x_shape = x.shape;
  p->N = x.shape[0];
  p->C = x.shape[1];
  p->positions = 1;
  for (size_t i = 2; i < x.shape.size(); ++i) p->positions *= x.shape[i];
  p->num_elements = x.size;
  if (a.unbiased && p->C < 2 && p->num_elements > 0)
    return node.InvalidArgument("unbiased=1 (variance divisor C - 1) needs C >= 2 channels, got C=", p->C,
                                " (X shape ", ShapeToString(x.shape), "); use unbiased=0");
  if (p->C == 0 && p->N * p->positions > 0)
    return node.InvalidArgument("X has C=0 channels (X shape ", ShapeToString(x.shape),
                                "): the statistics over the channels are undefined");
  std::vector<int64_t> moments = x.shape;
  moments[1] = 1;
  p->x = x.value.GetTensorRawData();
  p->y = kc.GetOutput(0, x.shape).GetTensorMutableRawData();
  p->mean = kc.GetOutput(1, moments).GetTensorMutableRawData();
  p->std = kc.GetOutput(2, moments).GetTensorMutableRawData();
  return nullptr;
}

template <typename T>
OrtStatus* ComputeCpu(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept;
template <typename T>
OrtStatus* ComputeCuda(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept;

// The op's traits for AttrKernel (include/normexport/custom_op.h).
struct PositionalNormOp {
  static constexpr const char* kName = "PositionalNorm";
  static constexpr const char* kFullName = kOpFullName;
  static constexpr size_t kNumInputs = 1, kNumOutputs = 3;
  using Attrs = normexport::pono::Attrs;
  static constexpr auto ReadAttrs = &normexport::pono::ReadAttrs;
  template <typename T> static constexpr auto Cpu = &ComputeCpu<T>;
  template <typename T> static constexpr auto Cuda = &ComputeCuda<T>;
};

template <typename T, Ep E>
using PositionalNormKernel = AttrKernel<PositionalNormOp, T, E>;

}  // namespace pono
}  // namespace normexport
