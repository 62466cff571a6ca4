// normexport::FilterResponseNorm (domain "normexport", version 1): ORT kernel
// shared by the CPU and CUDA execution providers.
//
//   inputs : X (N, C, D1..Dk), k >= 1; gamma, beta, tau with C elements each
//            (tau ignored when tlu == 0). All of element type T in {float, float16};
//            the CPU EP also serves double (see src/register.cc for why).
//   attrs  : eps float = 1e-6 (finite, >= 0); tlu int = 1 (0 or 1)
//   output : Y, same shape and type as X
//   math   : y = gamma * x / sqrt(mean_spatial(x^2) + eps) + beta; if tlu: y = max(y, tau)
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "normexport/custom_op.h"
#include "normexport/ort_utils.h"

namespace normexport {
namespace frn {

inline constexpr const char* kOpFullName = "normexport::FilterResponseNorm";

struct Attrs {
  float eps = 1e-6f;
  bool tlu = true;
};

// Everything a compute function needs, validated.
struct Problem {
  std::vector<int64_t> x_shape;
  int64_t N = 0, C = 0, plane_size = 0, num_planes = 0, num_elements = 0;
  const void* x = nullptr;
  const void* gamma = nullptr;
  const void* beta = nullptr;
  const void* tau = nullptr;  // nullptr when tlu == 0
  void* y = nullptr;
};

inline OrtStatus* ReadAttrs(const OrtKernelInfo* info, const NodeContext& node, Attrs* a) noexcept {
  float eps = 1e-6f;
  if (OrtStatus* st = GetNonNegativeAttr(info, node, "eps", 1e-6f, &eps)) return st;
  bool tlu = true;
  if (OrtStatus* st = GetFlagAttr(info, node, "tlu", true, &tlu)) return st;
  a->eps = eps;
  a->tlu = tlu;
  return nullptr;
}

// Validates the inputs and allocates Y. On success p->num_elements may be 0
// (empty tensor): the output exists and nothing needs computing.
inline OrtStatus* Prepare(const Ort::KernelContext& kc, const NodeContext& node, const Attrs& a,
                          ONNXTensorElementDataType type, Problem* p) {
  TensorInfo x;
  if (OrtStatus* st = GetInputTensor(kc, node, 0, "X", type, &x)) return st;
  if (OrtStatus* st = CheckRankAtLeast(node, 0, "X", x.shape, 3, "(N, C, D1, ..., Dk)")) return st;
  p->x_shape = x.shape;
  p->N = x.shape[0];
  p->C = x.shape[1];
  p->plane_size = 1;
  for (size_t i = 2; i < x.shape.size(); ++i) p->plane_size *= x.shape[i];
  p->num_planes = p->N * p->C;
  p->num_elements = x.size;

  const std::string because = StrCat("input X has C=", p->C, " channels (X shape ", ShapeToString(x.shape), ")");
  static const char* const kLabels[] = {"X", "gamma", "beta", "tau"};
  const void* params[4] = {nullptr, nullptr, nullptr, nullptr};
  const size_t last = a.tlu ? 3 : 2;  // tau is ignored (not even checked) when tlu == 0
  for (size_t i = 1; i <= last; ++i) {
    TensorInfo t;
    if (OrtStatus* st = GetInputTensor(kc, node, i, kLabels[i], type, &t)) return st;
    if (OrtStatus* st = CheckElementCount(node, i, kLabels[i], t.size, p->C, because)) return st;
    params[i] = t.value.GetTensorRawData();
  }
  p->x = x.value.GetTensorRawData();
  p->gamma = params[1];
  p->beta = params[2];
  p->tau = params[3];

  Ort::UnownedValue y = kc.GetOutput(0, x.shape);
  p->y = y.GetTensorMutableRawData();
  return nullptr;
}

// Per-EP compute functions (frn_cpu.cc, frn_cuda_op.cc). T: float, half (and double on CPU).
template <typename T>
OrtStatus* ComputeCpu(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept;
template <typename T>
OrtStatus* ComputeCuda(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept;

// The op's traits for AttrKernel (include/normexport/custom_op.h).
struct FilterResponseNormOp {
  static constexpr const char* kName = "FilterResponseNorm";
  static constexpr const char* kFullName = kOpFullName;
  static constexpr size_t kNumInputs = 4, kNumOutputs = 1;
  using Attrs = normexport::frn::Attrs;
  static constexpr auto ReadAttrs = &normexport::frn::ReadAttrs;
  template <typename T> static constexpr auto Cpu = &ComputeCpu<T>;
  template <typename T> static constexpr auto Cuda = &ComputeCuda<T>;
};

template <typename T, Ep E>
using FilterResponseNormKernel = AttrKernel<FilterResponseNormOp, T, E>;

}  // namespace frn
}  // namespace normexport
