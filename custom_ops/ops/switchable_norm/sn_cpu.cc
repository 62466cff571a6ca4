// CPU execution-provider wrapper of normexport::SwitchableNorm: plane
// statistics split over the N*C planes, mixing over the N samples, then the
// per-plane multiply-add over the planes, on ORT's intra-op thread pool.
// * Many samples (at least kSamplesPerCpu per hardware thread) of at most kMaxSampleTaskBytes:
//   one task per sample runs all three phases on it: its planes' statistics, the mix, then the
//   apply pass last plane to first, so the planes read last (still in L2) are re-read first. A
//   sample that fits in cache::TaskBytes() is read from memory once.
// * Otherwise (few or huge samples) the phases are split over all threads, in waves of samples
//   of about kWaveBytes of X (at least one sample), the apply phase again last plane to first.
// * Planes of one element (rank 2): one_element_planes per sample, no scratch.
// The per-plane scratch (2 doubles) covers only the planes in flight: one sample per task, or
// one wave, so a tensor of many small planes does not need 16 bytes of scratch per plane.
// Both paths run the same per-plane and per-sample functions, so they give the same bits
// whatever the split. Outputs of at least stream::ThresholdBytes() are written with streaming
// stores (normexport/cpu_stream.h).
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "normexport/cpu_parallel.h"
#include "normexport/cpu_stream.h"
#include "switchable_norm/sn_core.h"
#include "switchable_norm/sn_op.h"

namespace normexport {
namespace switchable_norm {

// Bytes of X per wave of samples.
constexpr int64_t kWaveBytes = int64_t{16} << 20;
// One task per sample when there are at least this many samples per hardware thread ...
constexpr int64_t kSamplesPerCpu = 4;
// ... and a sample is at most this big (a re-read of a larger one comes from memory anyway).
constexpr int64_t kMaxSampleTaskBytes = int64_t{16} << 20;
// Samples per task of that path (at most; at least kSamplesPerCpu tasks per hardware thread).
constexpr int64_t kSamplesPerTask = 8;

// ---- run-time ISA dispatch of the apply phase: baseline x86-64 and AVX2 + FMA ----
template <typename T>
using ApplyFn = void (*)(const Tensors<T>&, int64_t, int64_t) noexcept;
template <typename T>
void ApplyBase(const Tensors<T>& t, int64_t b, int64_t e) noexcept {
  apply_planes<T>(t, b, e);
}
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define NX_SN_AVX2 1
template <typename T>
__attribute__((target("avx2,fma"))) void ApplyAvx2(const Tensors<T>& t, int64_t b, int64_t e) noexcept {
  apply_planes<T>(t, b, e);
}
#endif
template <typename T>
ApplyFn<T> ApplyCore() noexcept {
#if defined(NX_SN_AVX2)
  static const bool avx2 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  if (avx2) return &ApplyAvx2<T>;
#endif
  return &ApplyBase<T>;
}

template <typename T>
OrtStatus* ComputeCpu(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, a, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;  // empty tensor: empty output

    const int64_t k = p.num_branches;
    Tensors<T> t{static_cast<const T*>(p.x),
                 static_cast<const T*>(p.scale),
                 static_cast<const T*>(p.bias),
                 static_cast<const T*>(p.running_mean),
                 static_cast<const T*>(p.running_var),
                 static_cast<T*>(p.y),
                 p.C,
                 p.plane_size,
                 a.eps,
                 softmax_weights(static_cast<const T*>(p.mean_weight), k, p.has_in, a.using_bn),
                 softmax_weights(static_cast<const T*>(p.var_weight), k, p.has_in, a.using_bn),
                 nullptr,
                 nullptr};

    t.nt = stream::UseNt(p.num_elements * static_cast<int64_t>(sizeof(T)));
    const int64_t planes_per_task = MinUnitsPerTask(p.plane_size);
    const ApplyFn<T> apply = ApplyCore<T>();
    const int64_t sample_bytes = p.C * p.plane_size * static_cast<int64_t>(sizeof(T));
    const int64_t cpus = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
    if (p.plane_size == 1) {  // rank 2 (or 1x1 planes): no per-plane scratch at all
      ParallelRanges(kc, p.N, MinUnitsPerTask(p.C),
                     [&t](int64_t begin, int64_t end) { one_element_planes<T>(t, begin, end); });
      return nullptr;
    }
    if (p.N >= kSamplesPerCpu * cpus && sample_bytes <= kMaxSampleTaskBytes) {
      // Tasks of up to kSamplesPerTask samples; scratch: one sample's planes per task.
      const int64_t per_task = std::max<int64_t>(1, std::min(kSamplesPerTask, p.N / (kSamplesPerCpu * cpus)));
      const RangeSplit split = SplitRanges(p.N, per_task);
      std::vector<double> scratch(static_cast<size_t>(2 * p.C * split.num_tasks));
      ParallelRanges(kc, p.N, per_task, [&t, apply, &p, &scratch, split](int64_t begin, int64_t end) {
        Tensors<T> tt = t;
        tt.stat0 = scratch.data() + 2 * p.C * (begin / split.per_task);
        tt.stat1 = tt.stat0 + p.C;
        for (int64_t n = begin; n < end; ++n) {
          tt.stat_base = n * p.C;
          plane_stats<T>(tt, n * p.C, (n + 1) * p.C);
          mix_samples<T>(tt, n, n + 1);
          apply(tt, n * p.C, (n + 1) * p.C);
        }
        if (t.nt) stream::Fence();
      });
      return nullptr;
    }
    // scratch for one wave: at most kWaveBytes of it (16 bytes per plane), at least one sample
    const int64_t samples_per_wave = std::max<int64_t>(
        1, std::min(kWaveBytes / std::max<int64_t>(1, sample_bytes), kWaveBytes / (16 * p.C)));
    std::vector<double> scratch(static_cast<size_t>(2 * p.C * std::min(samples_per_wave, p.N)));
    t.stat0 = scratch.data();
    t.stat1 = scratch.data() + scratch.size() / 2;
    for (int64_t n0 = 0; n0 < p.N; n0 += samples_per_wave) {
      const int64_t n1 = std::min(p.N, n0 + samples_per_wave);
      const int64_t plane0 = n0 * p.C, planes = (n1 - n0) * p.C;
      t.stat_base = plane0;
      ParallelRanges(kc, planes, planes_per_task,
                     [&t, plane0](int64_t begin, int64_t end) { plane_stats<T>(t, plane0 + begin, plane0 + end); });
      ParallelRanges(kc, n1 - n0, MinUnitsPerTask(p.C, int64_t{1} << 12),
                     [&t, n0](int64_t begin, int64_t end) { mix_samples<T>(t, n0 + begin, n0 + end); });
      // backwards: range [begin, end) of the task numbering = planes [last - end + 1, last - begin]
      const int64_t last = plane0 + planes - 1;
      ParallelRanges(kc, planes, planes_per_task, [&t, last, apply](int64_t begin, int64_t end) {
        apply(t, last - end + 1, last - begin + 1);
        if (t.nt) stream::Fence();
      });
    }
    return nullptr;
  });
}

template OrtStatus* ComputeCpu<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<double>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace switchable_norm
}  // namespace normexport
