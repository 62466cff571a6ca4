// CPU execution-provider compute of normexport::AdaIN for channels-last input
// (channels_last=1: content (N, D1..Dk, C), style (N, E1..Ek, C)); the tiling and the math are
// in adain_nhwc_core.h. Column moments of content and style tiles in parallel -> combined per
// (n, c) in row-tile order -> coefficients -> content tiles normalized in parallel. The tiles
// run on ORT's intra-op pool through ParallelRanges and depend only on the shapes, so any
// thread count gives bit-identical results.
#include <cstdint>
#include <type_traits>
#include <vector>

#include "adain/adain_nhwc_core.h"
#include "adain/adain_op.h"
#include "normexport/cpu_parallel.h"

namespace normexport {
namespace adain {
namespace {

// Per (n, c) moments of an (N, S, C) tensor, S >= 0 (S == 0: count 0).
template <typename T>
std::vector<nhwc::Moments> ColumnMoments(const Ort::KernelContext& kc, const T* x, int64_t N, int64_t S,
                                         int64_t C) {
  const nhwc::Tiling t = nhwc::MakeTiling(N, S, C);
  std::vector<nhwc::Moments> partial(static_cast<size_t>(N * t.row_tiles * C));
  ParallelRanges(kc, t.num_tiles(), MinUnitsPerTask(t.tile_elements()), [&](int64_t begin, int64_t end) noexcept {
    for (int64_t tile = begin; tile < end; ++tile) {
      const nhwc::Tile tl = nhwc::TileOf(t, tile);
      nhwc::TileColumnMoments<T>(x, t, tl, partial.data() + (tl.n * t.row_tiles + tl.rt) * C + tl.c0);
    }
  });
  std::vector<nhwc::Moments> out(static_cast<size_t>(N * C));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t rt = 0; rt < t.row_tiles; ++rt) {  // always in row-tile order
      const nhwc::Moments* src = partial.data() + (n * t.row_tiles + rt) * C;
      nhwc::Moments* dst = out.data() + n * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = nhwc::Combine(dst[c], src[c]);
    }
  return out;
}

}  // namespace

template <typename T>
OrtStatus* ComputeCpuNhwc(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, OnnxType<T>::value, &p, /*channels_last=*/true)) return st;
    if (p.num_elements == 0) return nullptr;  // empty content: empty output

    using Cmp = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
    const T* content = static_cast<const T*>(p.content);
    const T* style = static_cast<const T*>(p.style);
    T* y = static_cast<T*>(p.y);
    const std::vector<nhwc::Moments> mx = ColumnMoments<T>(kc, content, p.N, p.content_plane, p.C);
    const std::vector<nhwc::Moments> mz = ColumnMoments<T>(kc, style, p.N, p.style_plane, p.C);
    std::vector<Cmp> m(static_cast<size_t>(p.N * p.C)), k(m.size()), b(m.size());
    for (size_t i = 0; i < m.size(); ++i) nhwc::Coefficients<Cmp>(mx[i], mz[i], a.eps, a.alpha, &m[i], &k[i], &b[i]);

    const nhwc::Tiling t = nhwc::MakeTiling(p.N, p.content_plane, p.C);
    ParallelRanges(kc, t.num_tiles(), MinUnitsPerTask(t.tile_elements()), [&](int64_t begin, int64_t end) noexcept {
      for (int64_t tile = begin; tile < end; ++tile) {
        const nhwc::Tile tl = nhwc::TileOf(t, tile);
        const size_t off = static_cast<size_t>(tl.n * p.C);
        nhwc::TileApply<T, Cmp>(content, y, t, tl, m.data() + off, k.data() + off, b.data() + off);
      }
    });
    return nullptr;
  });
}

template OrtStatus* ComputeCpuNhwc<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpuNhwc<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpuNhwc<double>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace adain
}  // namespace normexport
