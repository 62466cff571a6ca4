// normexport::SPADE (domain "normexport", version 1): ORT kernel shared by the
// CPU and CUDA execution providers (contract: normexport/ops/spade.py).
//
//   inputs : X (N, C, D1..Dk), k >= 1; gamma_map, beta_map: shape of X;
//            running_mean, running_var: C elements each (read only when mode == 0).
//            All of element type T in {float, float16}; the CPU EP also serves double.
//   attrs  : epsilon float = 1e-5 (finite, >= 0); mode int = 0 (0 batch, 1 instance)
//   output : Y, shape and type of X
//   math   : x_hat = (X - mu) / sqrt(var + epsilon); Y = x_hat * (1 + gamma_map) + beta_map
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "normexport/custom_op.h"
#include "normexport/ort_utils.h"

namespace normexport {
namespace spade {

inline constexpr const char* kOpFullName = "normexport::SPADE";

struct Attrs {
  float eps = 1e-5f;
  int mode = 0;
};

struct Problem {
  std::vector<int64_t> x_shape;
  int64_t N = 0, C = 0, plane_size = 0, num_planes = 0, num_elements = 0;
  const void* x = nullptr;
  const void* gamma_map = nullptr;
  const void* beta_map = nullptr;
  const void* running_mean = nullptr;
  const void* running_var = nullptr;
  void* y = nullptr;
};

inline OrtStatus* ReadAttrs(const OrtKernelInfo* info, const NodeContext& node, Attrs* a) noexcept {
  float eps = 1e-5f;
  if (OrtStatus* st = GetNonNegativeAttr(info, node, "epsilon", 1e-5f, &eps)) return st;
  int64_t mode = 0;
  if (OrtStatus* st = GetAttrOr(info, node, "mode", int64_t{0}, &mode)) return st;
  if (mode != 0 && mode != 1)
    return node.InvalidArgument("attribute mode must be 0 (batch: running statistics) or 1 (instance), got ", mode);
  a->eps = eps;
  a->mode = static_cast<int>(mode);
  return nullptr;
}

inline OrtStatus* Prepare(const Ort::KernelContext& kc, const NodeContext& node, const Attrs& /*a*/,
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

  static const char* const kMaps[] = {"gamma_map", "beta_map"};
  const void* maps[2] = {nullptr, nullptr};
  for (size_t i = 1; i <= 2; ++i) {
    TensorInfo t;
    if (OrtStatus* st = GetInputTensor(kc, node, i, kMaps[i - 1], type, &t)) return st;
    if (t.shape != x.shape)
      return node.InvalidArgument("input ", kMaps[i - 1], " ('", node.InputName(i), "') has shape ",
                                  ShapeToString(t.shape), " but X has shape ", ShapeToString(x.shape), "; ",
                                  kMaps[i - 1], " must have the shape of X (no broadcasting)");
    maps[i - 1] = t.value.GetTensorRawData();
  }
  // running statistics: C elements in both modes (the function body reshapes them to (C, 1))
  const std::string because = StrCat("input X has C=", p->C, " channels (X shape ", ShapeToString(x.shape), ")");
  static const char* const kStats[] = {"running_mean", "running_var"};
  const void* stats[2] = {nullptr, nullptr};
  for (size_t i = 3; i <= 4; ++i) {
    TensorInfo t;
    if (OrtStatus* st = GetInputTensor(kc, node, i, kStats[i - 3], type, &t)) return st;
    if (OrtStatus* st = CheckElementCount(node, i, kStats[i - 3], t.size, p->C, because)) return st;
    stats[i - 3] = t.value.GetTensorRawData();
  }
  p->x = x.value.GetTensorRawData();
  p->gamma_map = maps[0];
  p->beta_map = maps[1];
  p->running_mean = stats[0];
  p->running_var = stats[1];
  Ort::UnownedValue y = kc.GetOutput(0, x.shape);
  p->y = y.GetTensorMutableRawData();
  return nullptr;
}

template <typename T>
OrtStatus* ComputeCpu(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept;
template <typename T>
OrtStatus* ComputeCuda(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept;

// The op's traits for AttrKernel (include/normexport/custom_op.h).
struct SpadeOp {
  static constexpr const char* kName = "SPADE";
  static constexpr const char* kFullName = kOpFullName;
  static constexpr size_t kNumInputs = 5, kNumOutputs = 1;
  using Attrs = normexport::spade::Attrs;
  static constexpr auto ReadAttrs = &normexport::spade::ReadAttrs;
  template <typename T> static constexpr auto Cpu = &ComputeCpu<T>;
  template <typename T> static constexpr auto Cuda = &ComputeCuda<T>;
};

template <typename T, Ep E>
using SpadeKernel = AttrKernel<SpadeOp, T, E>;

}  // namespace spade
}  // namespace normexport
