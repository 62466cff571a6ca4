// CPU execution-provider wrapper of normexport::GroupNorm. Splits the work into tasks run on
// ORT's intra-op thread pool; the split depends only on the shape, so any thread count gives
// bit-identical results.
//
// * Groups of at most cache::TaskBytes() (half the L2; the common case): tasks of whole
//   groups, each group read from memory once (the statistics and normalize passes hit L2).
// * Larger groups, at least kSerialGroupsPerCpu per hardware thread: one task per group. The
//   moments of its kChunk-element chunks (two-pass, chunk hot) are combined in chunk order
//   (Chan), then the chunks are normalized last to first, so the first re-reads find the
//   group's tail still in L2 (the rest of the group is read from memory a second time: a
//   group bigger than the cache cannot be read once).
// * Larger groups, few of them (batch 1, few groups, many threads): the chunks of a wave of
//   whole groups of about kWaveBytes are spread over all threads. Phase 1 computes every
//   chunk's moments in parallel; they are combined per group in the same order (so both
//   paths give the same bits); phase 2 normalizes the wave's chunks in parallel.
// * Outputs of at least stream::ThresholdBytes() (normexport/cpu_stream.h, the LLC size by
//   default) are written with streaming stores.
// The core runs compiled for AVX2 + FMA when the CPU has them (chosen once), else for baseline
// x86-64 (the library is built with -ffp-contract=fast: a * b + c fuses where FMA exists).
//
// -fno-trapping-math for this file only (it changes no result, it lets GCC if-convert the
// selects of the SiLU's clamp so that loop vectorizes: ~3x faster activation 2).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "group_norm/gn_core.h"
#include "group_norm/gn_op.h"
#include "normexport/cpu_cache.h"
#include "normexport/cpu_stream.h"

namespace normexport {
namespace gn {
namespace {

// A task should touch at least this many elements so scheduling overhead stays small.
constexpr int64_t kMinElementsPerTask = int64_t{1} << 15;
// Upper bound on whole-group tasks: enough for load balancing on large machines.
constexpr int64_t kMaxTasks = 1024;
// Large groups get one task each when there are at least this many per hardware thread.
constexpr int64_t kSerialGroupsPerCpu = 2;
// Chunk of a split group.
constexpr int64_t kChunk = int64_t{1} << 15;
// Bytes of X per wave of split groups (the wave stays in the LLC between its two phases).
constexpr int64_t kWaveBytes = int64_t{16} << 20;

// ---- run-time ISA dispatch: the core compiled for baseline x86-64 and again for AVX2 ----
template <typename T>
struct CoreFns {
  void (*groups)(const T*, T*, const T*, const T*, int64_t, int64_t, int64_t, GroupRange, float, int, bool) noexcept;
  Moments (*moments)(const T*, int64_t) noexcept;
  void (*normalize)(const T*, T*, int64_t, int64_t, int64_t, const T*, const T*, int64_t, const Moments&, float,
                    int, bool) noexcept;
};

template <typename T>
void GroupsBase(const T* x, T* y, const T* s, const T* b, int64_t c, int64_t sp, int64_t g, GroupRange r, float eps,
                int act, bool nt) noexcept {
  group_norm_groups<T>(x, y, s, b, c, sp, g, r, eps, act, nt);
}
template <typename T>
Moments MomentsBase(const T* x, int64_t n) noexcept {
  return moments<T>(x, n);
}
template <typename T>
void NormalizeBase(const T* xg, T* yg, int64_t begin, int64_t end, int64_t sp, const T* s, const T* b, int64_t c0,
                   const Moments& m, float eps, int act, bool nt) noexcept {
  normalize_range<T>(xg, yg, begin, end, sp, s, b, c0, m, eps, act, nt);
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define NX_GN_AVX2 __attribute__((target("avx2,fma")))
template <typename T>
NX_GN_AVX2 void GroupsAvx2(const T* x, T* y, const T* s, const T* b, int64_t c, int64_t sp, int64_t g, GroupRange r,
                           float eps, int act, bool nt) noexcept {
  group_norm_groups<T>(x, y, s, b, c, sp, g, r, eps, act, nt);
}
template <typename T>
NX_GN_AVX2 Moments MomentsAvx2(const T* x, int64_t n) noexcept {
  return moments<T>(x, n);
}
template <typename T>
NX_GN_AVX2 void NormalizeAvx2(const T* xg, T* yg, int64_t begin, int64_t end, int64_t sp, const T* s, const T* b,
                              int64_t c0, const Moments& m, float eps, int act, bool nt) noexcept {
  normalize_range<T>(xg, yg, begin, end, sp, s, b, c0, m, eps, act, nt);
}
inline bool CpuHasAvx2() noexcept {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}
#endif

template <typename T>
CoreFns<T> Core() noexcept {
#if defined(NX_GN_AVX2)
  if (CpuHasAvx2()) return {&GroupsAvx2<T>, &MomentsAvx2<T>, &NormalizeAvx2<T>};
#endif
  return {&GroupsBase<T>, &MomentsBase<T>, &NormalizeBase<T>};
}

template <typename T>
struct WholeGroupsJob {
  const T* x;
  T* y;
  const T* scale;
  const T* bias;
  int64_t C, spatial, G, num_groups_total, groups_per_task;
  float eps;
  int act;
  bool nt;
  CoreFns<T> fns;

  void Run(int64_t task) const noexcept {
    const int64_t begin = task * groups_per_task;
    const int64_t end = std::min(num_groups_total, begin + groups_per_task);
    if (begin < end) fns.groups(x, y, scale, bias, C, spatial, G, {begin, end}, eps, act, nt);
    if (nt) stream::Fence();
  }
  static void RunTask(void* job, size_t task) {
    static_cast<const WholeGroupsJob*>(job)->Run(static_cast<int64_t>(task));
  }
};

template <typename T>
struct SplitGroupsJob {
  const T* x;
  T* y;
  const T* scale;
  const T* bias;
  int64_t spatial, G, cpg, group_size, chunks_per_group;
  float eps;
  int act;
  bool nt;
  Moments* chunk_moments;       // phase 1 output, one per chunk
  const Moments* group_moments;  // phase 2 input, one per group
  CoreFns<T> fns;
  int64_t first_chunk = 0;       // the wave's first chunk (tasks are numbered inside the wave)

  void Chunk(int64_t task, int64_t* grp, int64_t* begin, int64_t* end) const noexcept {
    task += first_chunk;
    *grp = task / chunks_per_group;
    *begin = (task % chunks_per_group) * kChunk;
    *end = std::min(group_size, *begin + kChunk);
  }
  static void Stats(void* job, size_t task) {
    const auto* j = static_cast<const SplitGroupsJob*>(job);
    int64_t grp, begin, end;
    j->Chunk(static_cast<int64_t>(task), &grp, &begin, &end);
    j->chunk_moments[static_cast<int64_t>(task) + j->first_chunk] =
        j->fns.moments(j->x + grp * j->group_size + begin, end - begin);
  }
  static void Normalize(void* job, size_t task) {
    const auto* j = static_cast<const SplitGroupsJob*>(job);
    int64_t grp, begin, end;
    j->Chunk(static_cast<int64_t>(task), &grp, &begin, &end);
    const int64_t offset = grp * j->group_size;
    j->fns.normalize(j->x + offset, j->y + offset, begin, end, j->spatial, j->scale, j->bias,
                       (grp % j->G) * j->cpg, j->group_moments[grp], j->eps, j->act, j->nt);
    if (j->nt) stream::Fence();
  }
};

// One large group per task: chunk moments combined in chunk order (the numbers of the wave
// path), then the chunks normalized last to first (the latest chunks are still in L2).
template <typename T>
struct SerialGroupsJob {
  const T* x;
  T* y;
  const T* scale;
  const T* bias;
  int64_t spatial, G, cpg, group_size;
  float eps;
  int act;
  bool nt;
  CoreFns<T> fns;

  void Run(int64_t grp) const noexcept {
    const T* xg = x + grp * group_size;
    T* yg = y + grp * group_size;
    Moments m;
    for (int64_t b = 0; b < group_size; b += kChunk)
      m = combine(m, fns.moments(xg + b, std::min(kChunk, group_size - b)));
    for (int64_t b = (group_size - 1) / kChunk * kChunk; b >= 0; b -= kChunk)
      fns.normalize(xg, yg, b, std::min(group_size, b + kChunk), spatial, scale, bias, (grp % G) * cpg, m, eps,
                    act, nt);
    if (nt) stream::Fence();
  }
  static void RunTask(void* job, size_t task) {
    static_cast<const SerialGroupsJob*>(job)->Run(static_cast<int64_t>(task));
  }
};

}  // namespace

template <typename T>
OrtStatus* ComputeCpu(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, a, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;  // empty tensor: empty output

    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    const T* scale = static_cast<const T*>(p.scale);
    const T* bias = static_cast<const T*>(p.bias);
    const bool nt = stream::UseNt(p.num_elements * static_cast<int64_t>(sizeof(T)));

    if (p.group_size * static_cast<int64_t>(sizeof(T)) <= cache::TaskBytes()) {
      const int64_t min_groups = std::max<int64_t>(1, (kMinElementsPerTask + p.group_size - 1) / p.group_size);
      int64_t num_tasks = (p.num_groups_total + min_groups - 1) / min_groups;
      num_tasks = std::max<int64_t>(1, std::min(num_tasks, kMaxTasks));
      const int64_t per_task = (p.num_groups_total + num_tasks - 1) / num_tasks;
      num_tasks = (p.num_groups_total + per_task - 1) / per_task;
      WholeGroupsJob<T> job{x, y, scale, bias, p.C, p.spatial, p.G, p.num_groups_total, per_task, a.eps,
                            a.activation, nt, Core<T>()};
      if (num_tasks == 1) {
        job.Run(0);
      } else {
        kc.ParallelFor(&WholeGroupsJob<T>::RunTask, static_cast<size_t>(num_tasks), static_cast<size_t>(num_tasks),
                       &job);
      }
      return nullptr;
    }

    const int64_t cpus = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
    if (p.num_groups_total >= kSerialGroupsPerCpu * cpus) {
      SerialGroupsJob<T> job{x, y, scale, bias, p.spatial, p.G, p.C / p.G, p.group_size, a.eps, a.activation, nt,
                             Core<T>()};
      kc.ParallelFor(&SerialGroupsJob<T>::RunTask, static_cast<size_t>(p.num_groups_total),
                     static_cast<size_t>(p.num_groups_total), &job);
      return nullptr;
    }

    const int64_t chunks_per_group = (p.group_size + kChunk - 1) / kChunk;
    const int64_t num_chunks = p.num_groups_total * chunks_per_group;
    const int64_t groups_per_wave =
        std::max<int64_t>(1, kWaveBytes / (p.group_size * static_cast<int64_t>(sizeof(T))));
    std::vector<Moments> chunk_moments(static_cast<size_t>(num_chunks));
    std::vector<Moments> group_moments(static_cast<size_t>(p.num_groups_total));
    SplitGroupsJob<T> job{x, y, scale, bias, p.spatial, p.G, p.C / p.G, p.group_size, chunks_per_group,
                          a.eps, a.activation, nt, chunk_moments.data(), group_moments.data(), Core<T>()};
    for (int64_t g0 = 0; g0 < p.num_groups_total; g0 += groups_per_wave) {
      const int64_t g1 = std::min(p.num_groups_total, g0 + groups_per_wave);
      const size_t tasks = static_cast<size_t>((g1 - g0) * chunks_per_group);
      job.first_chunk = g0 * chunks_per_group;
      kc.ParallelFor(&SplitGroupsJob<T>::Stats, tasks, tasks, &job);
      for (int64_t g = g0; g < g1; ++g) {
        Moments m = chunk_moments[static_cast<size_t>(g * chunks_per_group)];
        for (int64_t k = 1; k < chunks_per_group; ++k)
          m = combine(m, chunk_moments[static_cast<size_t>(g * chunks_per_group + k)]);
        group_moments[static_cast<size_t>(g)] = m;
      }
      kc.ParallelFor(&SplitGroupsJob<T>::Normalize, tasks, tasks, &job);
    }
    return nullptr;
  });
}

template OrtStatus* ComputeCpu<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpu<double>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace gn
}  // namespace normexport
