// CPU execution-provider compute of normexport::FilterResponseNorm for channels-last input
// (channels_last=1, X (N, D1..Dk, C)); the tiling and the math are in frn_nhwc_core.h.
// Tiles run on ORT's intra-op pool through ParallelRanges; the split depends only on the
// shape, so any thread count gives bit-identical results.
//   one row tile per sample: one parallel pass (statistics, then normalization, per tile);
//   otherwise: per-tile column sums of squares in parallel -> added per (n, c) in row-tile
//   order -> per-tile normalization in parallel.
#include <cstdint>
#include <vector>

#include "filter_response_norm/frn_nhwc_core.h"
#include "filter_response_norm/frn_op.h"
#include "normexport/cpu_parallel.h"

namespace normexport {
namespace frn {

template <typename T>
OrtStatus* ComputeCpuNhwc(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, a, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;  // empty tensor: empty output

    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    const T* gamma = static_cast<const T*>(p.gamma);
    const T* beta = static_cast<const T*>(p.beta);
    const T* tau = static_cast<const T*>(p.tau);
    const nhwc::Tiling t = nhwc::MakeTiling(p.N, p.plane_size, p.C);
    const int64_t sample = p.plane_size * p.C;
    const int64_t min_tiles = MinUnitsPerTask(t.tile_elements());
    const float eps = a.eps;
    const bool tlu = a.tlu;

    if (nhwc::Fused(t)) {
      ParallelRanges(kc, t.num_tiles(), min_tiles, [&](int64_t begin, int64_t end) noexcept {
        double sum_sq[nhwc::kMaxBlockChannels];
        for (int64_t tile = begin; tile < end; ++tile) {
          const nhwc::Tile tl = nhwc::TileOf(t, tile);
          nhwc::TileSumSquares<T>(x + tl.n * sample, t, tl.c0, tl.c1, 0, p.plane_size, sum_sq);
          nhwc::TileNormalize<T>(x + tl.n * sample, y + tl.n * sample, gamma, beta, tau, t, tl.c0, tl.c1, 0,
                                 p.plane_size, sum_sq, eps, tlu);
        }
      });
      return nullptr;
    }

    // partial[(n * row_tiles + rt) * C + c]: the sum of squares of column c over row tile rt
    std::vector<double> partial(static_cast<size_t>(p.N * t.row_tiles * p.C));
    ParallelRanges(kc, t.num_tiles(), min_tiles, [&](int64_t begin, int64_t end) noexcept {
      for (int64_t tile = begin; tile < end; ++tile) {
        const nhwc::Tile tl = nhwc::TileOf(t, tile);
        nhwc::TileSumSquares<T>(x + tl.n * sample, t, tl.c0, tl.c1, tl.r0, tl.rows,
                                partial.data() + (tl.n * t.row_tiles + tl.rt) * p.C + tl.c0);
      }
    });
    std::vector<double> total(static_cast<size_t>(p.N * p.C), 0.0);
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t rt = 0; rt < t.row_tiles; ++rt) {  // always in row-tile order
        const double* src = partial.data() + (n * t.row_tiles + rt) * p.C;
        double* dst = total.data() + n * p.C;
        for (int64_t c = 0; c < p.C; ++c) dst[c] += src[c];
      }
    ParallelRanges(kc, t.num_tiles(), min_tiles, [&](int64_t begin, int64_t end) noexcept {
      for (int64_t tile = begin; tile < end; ++tile) {
        const nhwc::Tile tl = nhwc::TileOf(t, tile);
        nhwc::TileNormalize<T>(x + tl.n * sample, y + tl.n * sample, gamma, beta, tau, t, tl.c0, tl.c1, tl.r0,
                               tl.rows, total.data() + tl.n * p.C + tl.c0, eps, tlu);
      }
    });
    return nullptr;
  });
}

template OrtStatus* ComputeCpuNhwc<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpuNhwc<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpuNhwc<double>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace frn
}  // namespace normexport
