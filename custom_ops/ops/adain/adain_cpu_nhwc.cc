// CPU execution-provider compute of normexport::AdaIN for channels-last input
// (channels_last=1: content (N, D1..Dk, C), style (N, E1..Ek, C)); the tiling and the math are
// in adain_nhwc_core.h. The tiles run on ORT's intra-op pool through ParallelRanges and depend
// only on the shapes, so any thread count gives bit-identical results.
//   one row tile per column in both tensors: one parallel pass, a task doing (sample, channel
//   block) completely;
//   otherwise: column moments of every content and style tile in one parallel pass ->
//   combined per (n, c) in row-tile order -> coefficients -> content tiles normalized in
//   parallel.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "adain/adain_nhwc_core.h"
#include "adain/adain_op.h"
#include "normexport/cpu_parallel.h"

namespace normexport {
namespace adain {

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
    const float eps = a.eps, alpha = a.alpha;
    const int64_t C = p.C;
    const nhwc::Tiling tx = nhwc::MakeTiling(p.N, p.content_plane, C);
    const nhwc::Tiling tz = nhwc::MakeTiling(p.N, p.style_plane, C);  // the same channel blocks

    if (tx.row_tiles == 1 && tz.row_tiles == 1) {
      // tile index = n * num_blocks + b in both tensors
      const int64_t elements = p.content_plane * 2 + p.style_plane;  // per column
      ParallelRanges(kc, tx.num_tiles(), MinUnitsPerTask(elements * tx.block_width),
                     [&](int64_t begin, int64_t end) noexcept {
                       nhwc::Moments mx[nhwc::kMaxBlockChannels], mz[nhwc::kMaxBlockChannels];
                       Cmp m[nhwc::kMaxBlockChannels], k[nhwc::kMaxBlockChannels], b[nhwc::kMaxBlockChannels];
                       for (int64_t tile = begin; tile < end; ++tile) {
                         const nhwc::Tile lx = nhwc::TileOf(tx, tile), lz = nhwc::TileOf(tz, tile);
                         nhwc::TileColumnMoments<T>(content, tx, lx, mx);
                         nhwc::TileColumnMoments<T>(style, tz, lz, mz);
                         for (int64_t j = 0; j < lx.c1 - lx.c0; ++j)
                           nhwc::Coefficients<Cmp>(mx[j], mz[j], eps, alpha, &m[j], &k[j], &b[j]);
                         nhwc::TileApply<T, Cmp>(content, y, tx, lx, m, k, b);
                       }
                     });
      return nullptr;
    }

    // partial moments: [(n * row_tiles + rt) * C + c] per tensor
    std::vector<nhwc::Moments> part_x(static_cast<size_t>(p.N * tx.row_tiles * C));
    std::vector<nhwc::Moments> part_z(static_cast<size_t>(p.N * tz.row_tiles * C));
    const int64_t nx = tx.num_tiles(), units = nx + tz.num_tiles();
    const int64_t unit_elements = std::max<int64_t>(1, (nx * tx.tile_elements() + tz.num_tiles() * tz.tile_elements()) /
                                                           std::max<int64_t>(1, units));
    ParallelRanges(kc, units, MinUnitsPerTask(unit_elements), [&](int64_t begin, int64_t end) noexcept {
      for (int64_t u = begin; u < end; ++u) {
        const bool is_x = u < nx;
        const nhwc::Tiling& t = is_x ? tx : tz;
        const nhwc::Tile tl = nhwc::TileOf(t, is_x ? u : u - nx);
        nhwc::Moments* dst = (is_x ? part_x : part_z).data() + (tl.n * t.row_tiles + tl.rt) * C + tl.c0;
        nhwc::TileColumnMoments<T>(is_x ? content : style, t, tl, dst);
      }
    });
    std::vector<Cmp> m(static_cast<size_t>(p.N * C)), k(m.size()), b(m.size());
    for (int64_t n = 0; n < p.N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        nhwc::Moments mx, mz;  // row tiles always in order
        for (int64_t rt = 0; rt < tx.row_tiles; ++rt) mx = nhwc::Combine(mx, part_x[(n * tx.row_tiles + rt) * C + c]);
        for (int64_t rt = 0; rt < tz.row_tiles; ++rt) mz = nhwc::Combine(mz, part_z[(n * tz.row_tiles + rt) * C + c]);
        const size_t i = static_cast<size_t>(n * C + c);
        nhwc::Coefficients<Cmp>(mx, mz, eps, alpha, &m[i], &k[i], &b[i]);
      }
    }
    ParallelRanges(kc, nx, MinUnitsPerTask(tx.tile_elements()), [&](int64_t begin, int64_t end) noexcept {
      for (int64_t tile = begin; tile < end; ++tile) {
        const nhwc::Tile tl = nhwc::TileOf(tx, tile);
        const size_t off = static_cast<size_t>(tl.n * C + tl.c0);
        nhwc::TileApply<T, Cmp>(content, y, tx, tl, m.data() + off, k.data() + off, b.data() + off);
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
