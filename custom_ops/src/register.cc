// Entry point of libnormexport_ops.so: registers every normexport op, for every
// execution provider and element type, in the ONNX domain "normexport".
//
// Adding an op = one kernel folder under ops/ + one line in kOpTable below.
#include <mutex>
#include <string>
#include <vector>

#include "normexport/common.h"
#include "normexport/custom_op.h"
#include "normexport/ort_utils.h"

#include "filter_response_norm/frn_op.h"
#include "adain/adain_op.h"
#include "positional_norm/pono_op.h"
#include "group_norm/gn_op.h"
#include "spade/spade_op.h"
#include "switchable_norm/sn_op.h"

namespace normexport {
namespace {

using OpList = std::vector<const OrtCustomOp*>;

// Adds every variant of kernel template K: CPU float/float16/double and, when
// built with CUDA, CUDA float/float16. The op objects are process-lifetime singletons.
//
// Why CPU double: ORT builds one schema per op name from the types of the ops
// registered under it, and once a schema exists it never falls back to the
// model-local ONNX function of the same name. Without a double variant, a
// float64 normexport node is rejected at session creation ("Type 'tensor(double)'
// of input parameter (X) ... is invalid") as soon as this library is registered;
// with it, float64 runs (on the CPU kernel, computed in double).
template <template <typename, Ep> class K>
void AddAllVariants(OpList& ops) {
  static const SameTypeOp<K, float, Ep::kCpu> cpu_f32;
  static const SameTypeOp<K, half, Ep::kCpu> cpu_f16;
  static const SameTypeOp<K, double, Ep::kCpu> cpu_f64;
  ops.push_back(&cpu_f32);
  ops.push_back(&cpu_f16);
  ops.push_back(&cpu_f64);
#ifdef NORMEXPORT_WITH_CUDA
  static const SameTypeOp<K, float, Ep::kCuda> cuda_f32;
  static const SameTypeOp<K, half, Ep::kCuda> cuda_f16;
  ops.push_back(&cuda_f32);
  ops.push_back(&cuda_f16);
#endif
}

// ---- THE op table: one line per op -------------------------------------
constexpr void (*kOpTable[])(OpList&) = {
    &AddAllVariants<frn::FilterResponseNormKernel>,  // normexport::FilterResponseNorm
    &AddAllVariants<adain::AdaINKernel>,             // normexport::AdaIN
    &AddAllVariants<pono::PositionalNormKernel>,     // normexport::PositionalNorm
    &AddAllVariants<gn::GroupNormKernel>,            // normexport::GroupNorm
    &AddAllVariants<spade::SpadeKernel>,             // normexport::SPADE
    &AddAllVariants<switchable_norm::SwitchableNormKernel>,  // normexport::SwitchableNorm
};
// -------------------------------------------------------------------------

const OpList& AllOps() {
  static const OpList ops = [] {
    OpList v;
    for (auto add : kOpTable) add(v);
    return v;
  }();
  return ops;
}

// Domains handed to ORT must outlive every session created from the session
// options, which this library cannot observe: they are kept for the life of
// the process (one small object per RegisterCustomOps call).
void KeepAlive(OrtCustomOpDomain* domain) {
  static std::mutex mu;
  static std::vector<OrtCustomOpDomain*>* domains = new std::vector<OrtCustomOpDomain*>();  // never destroyed
  std::lock_guard<std::mutex> lock(mu);
  domains->push_back(domain);
}

// Session-options config entry marking that this library's domain was added,
// so registering twice on the same OrtSessionOptions is a no-op instead of a
// "Domain already set in registry" failure at session creation. (A config
// entry travels with the options, including clones, unlike a pointer set.)
constexpr const char* kRegisteredKey = "normexport.custom_ops_registered";

OrtStatus* Register(OrtSessionOptions* options, const OrtApi& api) {
  int already = 0;
  if (OrtStatus* st = api.HasSessionConfigEntry(options, kRegisteredKey, &already)) return st;
  if (already) return nullptr;

  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api.CreateCustomOpDomain(kDomain, &domain)) return st;
  for (const OrtCustomOp* op : AllOps()) {
    if (OrtStatus* st = api.CustomOpDomain_Add(domain, op)) {
      api.ReleaseCustomOpDomain(domain);
      return st;
    }
  }
  if (OrtStatus* st = api.AddCustomOpDomain(options, domain)) {
    api.ReleaseCustomOpDomain(domain);
    return st;
  }
  KeepAlive(domain);
  return api.AddSessionConfigEntry(options, kRegisteredKey, "1");
}

}  // namespace
}  // namespace normexport

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (api_base == nullptr) return nullptr;  // nothing we can report through
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // Runtime older than the headers we were built with. CreateStatus is the
    // first OrtApi entry and exists in every API version, so report via API 1.
    const OrtApi* api1 = api_base->GetApi(1);
    if (api1 == nullptr) return nullptr;
    const std::string msg = "libnormexport_ops was built against ONNX Runtime API version " +
                            std::to_string(ORT_API_VERSION) + " but the loaded onnxruntime " +
                            api_base->GetVersionString() + " does not provide it; use a newer onnxruntime";
    return api1->CreateStatus(ORT_FAIL, msg.c_str());
  }
  Ort::InitApi(api);
  try {
    return normexport::Register(options, *api);
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, (std::string("normexport: RegisterCustomOps failed: ") + e.what()).c_str());
  } catch (...) {
    return api->CreateStatus(ORT_FAIL, "normexport: RegisterCustomOps failed");
  }
}
