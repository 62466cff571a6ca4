// normexport::FilterResponseNorm (domain "normexport", version 1): ORT kernel
// shared by the CPU and CUDA execution providers.
//
//   inputs : X (N, C, D1..Dk), k >= 1, or with channels_last=1 X (N, D1..Dk, C) (channels
//            the LAST dim); gamma, beta, tau with C elements each (tau ignored when
//            tlu == 0). All of element type T in {float, float16}; the CPU EP also serves
//            double (see src/register.cc for why).
//   attrs  : eps float = 1e-6 (finite, >= 0); tlu int = 1 (0 or 1); channels_last int = 0
//            (0 or 1): the layout of X (and Y)
//   output : Y, same shape, layout and type as X
//   math   : y = gamma * x / sqrt(mean_spatial(x^2) + eps) + beta; if tlu: y = max(y, tau)
//   compute: channels first: ComputeCpu (frn_cpu.cc, frn_core.h); channels last:
//            ComputeCpuNhwc (frn_cpu_nhwc.cc, frn_nhwc_core.h); CUDA: ComputeCuda
//            (frn_cuda_op.cc) launches the kernel of the layout (frn_cuda.cu, frn_nhwc_cuda.cu).
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
  bool channels_last = false;  // X is (N, D1..Dk, C)
};

// Everything a compute function needs, validated.
struct Problem {
  std::vector<int64_t> x_shape;
  bool channels_last = false;  // X is (N, plane_size, C) instead of (N, C, plane_size)
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
  bool channels_last = false;
  if (OrtStatus* st = GetFlagAttr(info, node, "channels_last", false, &channels_last)) return st;
  a->eps = eps;
  a->tlu = tlu;
  a->channels_last = channels_last;
  return nullptr;
}

// Validates the inputs and allocates Y. On success p->num_elements may be 0
// (empty tensor): the output exists and nothing needs computing.
inline OrtStatus* Prepare(const Ort::KernelContext& kc, const NodeContext& node, const Attrs& a,
                          ONNXTensorElementDataType type, Problem* p) {
  TensorInfo x;
  if (OrtStatus* st = GetInputTensor(kc, node, 0, "X", type, &x)) return st;
  const char* layout = a.channels_last ? "(N, D1, ..., Dk, C) (channels_last=1)" : "(N, C, D1, ..., Dk)";
  if (OrtStatus* st = CheckRankAtLeast(node, 0, "X", x.shape, 3, layout)) return st;
  const size_t rank = x.shape.size();
  const size_t c_axis = a.channels_last ? rank - 1 : 1;
  p->x_shape = x.shape;
  p->channels_last = a.channels_last;
  p->N = x.shape[0];
  p->C = x.shape[c_axis];
  p->plane_size = 1;
  for (size_t i = 1; i < rank; ++i)
    if (i != c_axis) p->plane_size *= x.shape[i];
  p->num_planes = p->N * p->C;
  p->num_elements = x.size;

  const std::string because = StrCat("input X has C=", p->C, " channels (X shape ", ShapeToString(x.shape),
                                     a.channels_last ? ", channels_last=1: C is the last dim)" : ")");
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

// Per-EP compute functions (frn_cpu.cc, frn_cpu_nhwc.cc, frn_cuda_op.cc). T: float, half (and
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
struct FilterResponseNormOp {
  static constexpr const char* kName = "FilterResponseNorm";
  static constexpr const char* kFullName = kOpFullName;
  static constexpr size_t kNumInputs = 4, kNumOutputs = 1;
  using Attrs = normexport::frn::Attrs;
  static constexpr auto ReadAttrs = &normexport::frn::ReadAttrs;
  template <typename T> static constexpr auto Cpu = &ComputeCpuLayout<T>;
  template <typename T> static constexpr auto Cuda = &ComputeCuda<T>;
};

template <typename T, Ep E>
using FilterResponseNormKernel = AttrKernel<FilterResponseNormOp, T, E>;

}  // namespace frn
}  // namespace normexport
