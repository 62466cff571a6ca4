// CPU execution-provider wrapper of normexport::SPADE: mode 0 splits the flat
// element range, mode 1 the N*C planes, across ORT's intra-op thread pool. Outputs of at least
// stream::ThresholdBytes() are written with streaming stores (normexport/cpu_stream.h).
#include <cstdint>

#include "normexport/cpu_parallel.h"
#include "normexport/cpu_stream.h"
#include "spade/spade_core.h"
#include "spade/spade_op.h"

namespace normexport {
namespace spade {
namespace {

// ---- run-time ISA dispatch: the core compiled for baseline x86-64 and again for AVX2 + FMA ----
template <typename T>
using RangeFn = void (*)(const Tensors<T>&, int64_t, int64_t) noexcept;
template <typename T>
void BatchBase(const Tensors<T>& t, int64_t b, int64_t e) noexcept {
  spade_batch_elements<T>(t, b, e);
}
template <typename T>
void InstanceBase(const Tensors<T>& t, int64_t b, int64_t e) noexcept {
  spade_instance_planes<T>(t, b, e);
}
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define NX_SPADE_AVX2 1
template <typename T>
__attribute__((target("avx2,fma"))) void BatchAvx2(const Tensors<T>& t, int64_t b, int64_t e) noexcept {
  spade_batch_elements<T>(t, b, e);
}
template <typename T>
__attribute__((target("avx2,fma"))) void InstanceAvx2(const Tensors<T>& t, int64_t b, int64_t e) noexcept {
  spade_instance_planes<T>(t, b, e);
}
#endif
inline bool UseAvx2() noexcept {
#if defined(NX_SPADE_AVX2)
  static const bool avx2 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return avx2;
#else
  return false;
#endif
}
template <typename T>
RangeFn<T> BatchCore() noexcept {
#if defined(NX_SPADE_AVX2)
  if (UseAvx2()) return &BatchAvx2<T>;
#endif
  return &BatchBase<T>;
}
template <typename T>
RangeFn<T> InstanceCore() noexcept {
#if defined(NX_SPADE_AVX2)
  if (UseAvx2()) return &InstanceAvx2<T>;
#endif
  return &InstanceBase<T>;
}

}  // namespace

template <typename T>
OrtStatus* ComputeCpu(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, a, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;  // empty tensor: empty output
    Tensors<T> t{static_cast<const T*>(p.x),
                       static_cast<const T*>(p.gamma_map),
                       static_cast<const T*>(p.beta_map),
                       static_cast<const T*>(p.running_mean),
                       static_cast<const T*>(p.running_var),
                       static_cast<T*>(p.y),
                       p.C,
                       p.plane_size,
                       a.eps};
    t.nt = stream::UseNt(p.num_elements * static_cast<int64_t>(sizeof(T)));
    if (a.mode == 0) {
      ParallelRanges(kc, p.num_elements, MinUnitsPerTask(1),
                     [&t, fn = BatchCore<T>()](int64_t begin, int64_t end) {
                       fn(t, begin, end);
                       if (t.nt) stream::Fence();
                     });
    } else {
      ParallelRanges(kc, p.num_planes, MinUnitsPerTask(p.plane_size),
                     [&t, fn = InstanceCore<T>()](int64_t begin, int64_t end) {
                       fn(t, begin, end);
                       if (t.nt) stream::Fence();
                     });
    }
    return nullptr;
  });
}

template OrtStatus* ComputeCpu<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<double>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace spade
}  // namespace normexport
