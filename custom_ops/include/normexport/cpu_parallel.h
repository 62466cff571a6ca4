// Splitting a range of work units across ORT's intra-op thread pool
// (KernelContext::ParallelFor) for CPU kernel wrappers.
//
// ParallelRanges(kc, total, min_units, fn) calls fn(begin, end) (noexcept) over
// disjoint ranges covering [0, total), each of at least min_units units (except
// the last), at most kMaxTasks ranges. The split depends only on total and
// min_units, never on the thread count, so kernels that compute each unit
// independently give identical results for any intra_op_num_threads.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace normexport {

inline constexpr int64_t kParallelMaxTasks = 1024;

// Units per task so that a task touches about `min_elements` elements when a
// unit holds `unit_elements` elements.
inline int64_t MinUnitsPerTask(int64_t unit_elements, int64_t min_elements = int64_t{1} << 15) noexcept {
  if (unit_elements <= 0) return 1;
  return std::max<int64_t>(1, (min_elements + unit_elements - 1) / unit_elements);
}

// The split ParallelRanges uses: num_tasks ranges of per_task units (the last may be shorter);
// range k starts at k * per_task (a caller can size per-task scratch with it).
struct RangeSplit {
  int64_t num_tasks, per_task;
};
inline RangeSplit SplitRanges(int64_t total, int64_t min_units) noexcept {
  if (total <= 0) return {0, 1};
  min_units = std::max<int64_t>(1, min_units);
  int64_t num_tasks = (total + min_units - 1) / min_units;
  num_tasks = std::max<int64_t>(1, std::min(num_tasks, kParallelMaxTasks));
  const int64_t per_task = (total + num_tasks - 1) / num_tasks;
  return {(total + per_task - 1) / per_task, per_task};
}

template <typename F>
void ParallelRanges(const Ort::KernelContext& kc, int64_t total, int64_t min_units, const F& fn) {
  if (total <= 0) return;
  const RangeSplit split = SplitRanges(total, min_units);
  const int64_t num_tasks = split.num_tasks, per_task = split.per_task;
  if (num_tasks == 1) {
    fn(int64_t{0}, total);
    return;
  }
  struct Job {
    const F* fn;
    int64_t total, per_task;
    static void Run(void* p, size_t task) {
      const Job* j = static_cast<const Job*>(p);
      const int64_t begin = static_cast<int64_t>(task) * j->per_task;
      const int64_t end = std::min(j->total, begin + j->per_task);
      if (begin < end) (*j->fn)(begin, end);
    }
  } job{&fn, total, per_task};
  kc.ParallelFor(&Job::Run, static_cast<size_t>(num_tasks), static_cast<size_t>(num_tasks), &job);
}

}  // namespace normexport
