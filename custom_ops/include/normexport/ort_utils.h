// Thin helpers for the ONNX Runtime wrappers of normexport kernels.
//
// Everything here returns OrtStatus* (nullptr = success) instead of throwing, so
// kernels can report errors through CreateKernelV2 / KernelComputeV2 without
// letting a C++ exception cross the C ABI. Messages always start with
// "<domain>::<Op> (node '<name>'): ".
//
// Requires ORT_API_MANUAL_INIT (set by CMake) and Ort::InitApi() having been
// called in RegisterCustomOps.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <new>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "normexport/common.h"
#ifdef NORMEXPORT_WITH_CUDA
#include "normexport/cuda_launch.h"
#endif

namespace normexport {

// ---------------------------------------------------------------- types
template <typename T>
struct OnnxType;
template <>
struct OnnxType<float> {
  static constexpr ONNXTensorElementDataType value = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  static constexpr const char* name = "float";
};
template <>
struct OnnxType<half> {
  static constexpr ONNXTensorElementDataType value = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  static constexpr const char* name = "float16";
};
template <>
struct OnnxType<double> {
  static constexpr ONNXTensorElementDataType value = ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
  static constexpr const char* name = "double";
};

inline const char* ElementTypeName(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "double";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    default: return "other";
  }
}

// ---------------------------------------------------------------- strings / status
template <typename... Args>
std::string StrCat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

inline std::string ShapeToString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

inline OrtStatus* MakeStatus(OrtErrorCode code, const std::string& msg) noexcept {
  return Ort::GetApi().CreateStatus(code, msg.c_str());
}

// printf-style status.
inline OrtStatus* MakeStatusF(OrtErrorCode code, const char* fmt, ...) noexcept
    __attribute__((format(printf, 2, 3)));
inline OrtStatus* MakeStatusF(OrtErrorCode code, const char* fmt, ...) noexcept {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return Ort::GetApi().CreateStatus(code, buf);
}

// Identity of one node, for error messages: op, node name, graph input names.
struct NodeContext {
  std::string op;                        // e.g. "normexport::FilterResponseNorm"
  std::string node;                      // node name in the graph ("" if unnamed)
  std::vector<std::string> input_names;  // graph value name of each input

  std::string Prefix() const { return StrCat(op, " (node '", node, "')"); }

  std::string InputName(size_t i) const { return i < input_names.size() ? input_names[i] : std::string("?"); }

  template <typename... Args>
  OrtStatus* Error(OrtErrorCode code, const Args&... args) const noexcept {
    try {
      return MakeStatus(code, StrCat(Prefix(), ": ", args...));
    } catch (...) {
      return Ort::GetApi().CreateStatus(code, op.c_str());
    }
  }
  template <typename... Args>
  OrtStatus* InvalidArgument(const Args&... args) const noexcept {
    return Error(ORT_INVALID_ARGUMENT, args...);
  }

  // Fills node name and input names from the kernel info (best effort).
  static NodeContext FromKernelInfo(const OrtKernelInfo* info, std::string op_name) {
    NodeContext ctx;
    ctx.op = std::move(op_name);
    Ort::ConstKernelInfo ki(info);
    try {
      ctx.node = ki.GetNodeName();
    } catch (const Ort::Exception&) {
    }
    try {
      const size_t n = ki.GetInputCount();
      for (size_t i = 0; i < n; ++i) ctx.input_names.push_back(ki.GetInputName(i));
    } catch (const Ort::Exception&) {
    }
    return ctx;
  }
};

// Runs f() (returning OrtStatus*) and converts any C++ exception into a status
// naming the node. Use around every ORT C++ API call sequence in a kernel.
template <typename F>
OrtStatus* Guarded(const NodeContext& ctx, F&& f) noexcept {
  try {
    return f();
  } catch (const Ort::Exception& e) {
    return ctx.Error(e.GetOrtErrorCode(), e.what());
  } catch (const std::bad_alloc&) {
    return ctx.Error(ORT_FAIL, "out of memory");
  } catch (const std::exception& e) {
    return ctx.Error(ORT_FAIL, e.what());
  } catch (...) {
    return ctx.Error(ORT_FAIL, "unknown C++ exception");
  }
}

// ---------------------------------------------------------------- attributes
namespace detail {
inline bool Ok(OrtStatus* st) noexcept {
  if (st == nullptr) return true;
  Ort::GetApi().ReleaseStatus(st);
  return false;
}
}  // namespace detail

// True if the node has an attribute `name` of any scalar/list/string type.
inline bool HasAttribute(const OrtKernelInfo* info, const char* name) noexcept {
  const OrtApi& api = Ort::GetApi();
  float f;
  int64_t i;
  size_t size = 0;
  if (detail::Ok(api.KernelInfoGetAttribute_float(info, name, &f))) return true;
  if (detail::Ok(api.KernelInfoGetAttribute_int64(info, name, &i))) return true;
  size = 0;
  if (detail::Ok(api.KernelInfoGetAttribute_string(info, name, nullptr, &size))) return true;
  size = 0;
  if (detail::Ok(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &size))) return true;
  size = 0;
  if (detail::Ok(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size))) return true;
  return false;
}

// Reads a float attribute, `def` when absent; error when present with another type.
inline OrtStatus* GetAttrOr(const OrtKernelInfo* info, const NodeContext& ctx, const char* name, float def,
                            float* out) noexcept {
  float v = 0.f;
  if (detail::Ok(Ort::GetApi().KernelInfoGetAttribute_float(info, name, &v))) {
    *out = v;
    return nullptr;
  }
  if (HasAttribute(info, name))
    return ctx.InvalidArgument("attribute '", name, "' must be a float (AttributeProto FLOAT)");
  *out = def;
  return nullptr;
}

// Reads an int attribute, `def` when absent; error when present with another type.
inline OrtStatus* GetAttrOr(const OrtKernelInfo* info, const NodeContext& ctx, const char* name, int64_t def,
                            int64_t* out) noexcept {
  int64_t v = 0;
  if (detail::Ok(Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &v))) {
    *out = v;
    return nullptr;
  }
  if (HasAttribute(info, name))
    return ctx.InvalidArgument("attribute '", name, "' must be an int (AttributeProto INT)");
  *out = def;
  return nullptr;
}

// An epsilon-like float attribute: `def` when absent, else finite and >= 0.
inline OrtStatus* GetNonNegativeAttr(const OrtKernelInfo* info, const NodeContext& ctx, const char* name,
                                     float def, float* out) noexcept {
  if (OrtStatus* st = GetAttrOr(info, ctx, name, def, out)) return st;
  if (!std::isfinite(*out) || *out < 0.0f)
    return ctx.InvalidArgument("attribute ", name, " must be a finite number >= 0, got ", *out);
  return nullptr;
}

// A 0/1 int attribute: `def` when absent; any other value is an error.
inline OrtStatus* GetFlagAttr(const OrtKernelInfo* info, const NodeContext& ctx, const char* name, bool def,
                              bool* out) noexcept {
  int64_t v = def ? 1 : 0;
  if (OrtStatus* st = GetAttrOr(info, ctx, name, v, &v)) return st;
  if (v != 0 && v != 1) return ctx.InvalidArgument("attribute ", name, " must be 0 or 1, got ", v);
  *out = v == 1;
  return nullptr;
}

// ---------------------------------------------------------------- inputs / shapes
struct TensorInfo {
  std::vector<int64_t> shape;
  int64_t size = 0;  // element count
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  Ort::ConstValue value{nullptr};
};

// Fetches input `index` (label = formal name in the op contract, e.g. "X") and
// checks that it is present, is a tensor and has element type `expected`.
inline OrtStatus* GetInputTensor(const Ort::KernelContext& kc, const NodeContext& ctx, size_t index,
                                 const char* label, ONNXTensorElementDataType expected, TensorInfo* out) {
  if (index >= kc.GetInputCount())
    return ctx.InvalidArgument("missing input ", index, " ('", label, "'): node has ", kc.GetInputCount(),
                               " inputs");
  Ort::ConstValue v = kc.GetInput(index);
  if (v == nullptr) return ctx.InvalidArgument("input ", index, " ('", label, "') is not provided");
  if (!v.IsTensor()) return ctx.InvalidArgument("input '", label, "' ('", ctx.InputName(index), "') is not a tensor");
  auto ti = v.GetTensorTypeAndShapeInfo();
  out->type = ti.GetElementType();
  if (out->type != expected)
    return ctx.InvalidArgument("input '", label, "' ('", ctx.InputName(index), "') has element type ",
                               ElementTypeName(out->type), ", expected ", ElementTypeName(expected));
  out->shape = ti.GetShape();
  out->size = static_cast<int64_t>(ti.GetElementCount());
  out->value = v;
  return nullptr;
}

inline OrtStatus* CheckRankAtLeast(const NodeContext& ctx, size_t index, const char* label,
                                   const std::vector<int64_t>& shape, size_t min_rank, const char* layout) {
  if (shape.size() >= min_rank) return nullptr;
  return ctx.InvalidArgument("input ", label, " ('", ctx.InputName(index), "') must have rank >= ", min_rank, " ",
                             layout, ", got rank ", shape.size(), " (shape ", ShapeToString(shape), ")");
}

// "gamma has 8 elements but input X has C=16 channels (X shape [2,16,5,7])"
inline OrtStatus* CheckElementCount(const NodeContext& ctx, size_t index, const char* label, int64_t actual,
                                    int64_t expected, const std::string& because) {
  if (actual == expected) return nullptr;
  return ctx.InvalidArgument(label, " has ", actual, " elements but ", because, "; ", label, " ('",
                             ctx.InputName(index), "') must have exactly ", expected, " elements");
}

#ifdef NORMEXPORT_WITH_CUDA
// Turns a failing CUDA code (cudaError_t value) into an ORT_EP_FAIL status naming the node.
inline OrtStatus* CudaErrorStatus(const NodeContext& node, int code, const std::string& what) noexcept {
  return node.Error(ORT_EP_FAIL, what, ": ", cuda::ErrorName(code), " (", cuda::ErrorString(code), ")");
}
#endif

}  // namespace normexport
