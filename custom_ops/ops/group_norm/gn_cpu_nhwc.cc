// CPU execution-provider compute of normexport::GroupNorm for channels-last input
// (channels_last=1, X (N, D1..Dk, C)); the tiling and the math are in gn_nhwc_core.h.
// Tiles run on ORT's intra-op pool through ParallelRanges; the split depends only on the
// shape, so any thread count gives bit-identical results.
//   fused tiling (every tile holds whole groups over all rows): one parallel pass;
//   otherwise: per-tile segment moments in parallel -> combined per (n, group) in a fixed
//   order -> per-tile normalization in parallel.
#include <cstdint>
#include <vector>

#include "group_norm/gn_nhwc_core.h"
#include "group_norm/gn_op.h"
#include "normexport/cpu_parallel.h"

namespace normexport {
namespace gn {

template <typename T>
OrtStatus* ComputeCpuNhwc(const NodeContext& node, const Attrs& a, OrtKernelContext* context) noexcept {
  return Guarded(node, [&]() -> OrtStatus* {
    Ort::KernelContext kc(context);
    Problem p;
    if (OrtStatus* st = Prepare(kc, node, a, OnnxType<T>::value, &p)) return st;
    if (p.num_elements == 0) return nullptr;  // empty tensor: empty output

    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    const T* scale = static_cast<const T*>(p.scale);
    const T* bias = static_cast<const T*>(p.bias);
    const nhwc::Tiling t = nhwc::MakeTiling(p.N, p.spatial, p.C, p.G);
    const int64_t sample = p.spatial * p.C;
    const int64_t min_tiles = MinUnitsPerTask(t.tile_elements());
    const float eps = a.eps;
    const int act = a.activation;

    if (t.fused()) {
      ParallelRanges(kc, t.num_tiles(), min_tiles, [&](int64_t begin, int64_t end) noexcept {
        nhwc::Moments mom[nhwc::kMaxBlockChannels];  // whole-group blocks: <= kMaxBlockChannels groups
        for (int64_t tile = begin; tile < end; ++tile) {
          const nhwc::Tile tl = nhwc::TileOf(t, tile);
          const nhwc::Block blk = nhwc::BlockOf(t, tl.b);
          nhwc::TileMoments<T>(x + tl.n * sample, t, blk, 0, p.spatial, mom);
          nhwc::TileNormalize<T>(x + tl.n * sample, y + tl.n * sample, scale, bias, t, blk, 0, p.spatial, mom, eps,
                                 act);
        }
      });
      return nullptr;
    }

    std::vector<nhwc::Moments> partial(static_cast<size_t>(t.num_partials()));
    ParallelRanges(kc, t.num_tiles(), min_tiles, [&](int64_t begin, int64_t end) noexcept {
      nhwc::Moments mom[nhwc::kMaxBlockChannels];
      for (int64_t tile = begin; tile < end; ++tile) {
        const nhwc::Tile tl = nhwc::TileOf(t, tile);
        const nhwc::Block blk = nhwc::BlockOf(t, tl.b);
        nhwc::TileMoments<T>(x + tl.n * sample, t, blk, tl.r0, tl.rows, mom);
        for (int64_t g = blk.g0; g < blk.g1; ++g)
          partial[static_cast<size_t>(t.partial_index(tl.n, tl.rt, g, blk.k))] = mom[g - blk.g0];
      }
    });
    // per (n, g): row tiles, then blocks of the group, always in this order
    std::vector<nhwc::Moments> groups(static_cast<size_t>(p.N * p.G));
    for (int64_t n = 0; n < p.N; ++n) {
      for (int64_t g = 0; g < p.G; ++g) {
        nhwc::Moments m;
        for (int64_t rt = 0; rt < t.row_tiles; ++rt)
          for (int64_t k = 0; k < t.blocks_per_group; ++k)
            m = nhwc::Combine(m, partial[static_cast<size_t>(t.partial_index(n, rt, g, k))]);
        groups[static_cast<size_t>(n * p.G + g)] = m;
      }
    }
    ParallelRanges(kc, t.num_tiles(), min_tiles, [&](int64_t begin, int64_t end) noexcept {
      for (int64_t tile = begin; tile < end; ++tile) {
        const nhwc::Tile tl = nhwc::TileOf(t, tile);
        const nhwc::Block blk = nhwc::BlockOf(t, tl.b);
        nhwc::TileNormalize<T>(x + tl.n * sample, y + tl.n * sample, scale, bias, t, blk, tl.r0, tl.rows,
                               groups.data() + tl.n * p.G + blk.g0, eps, act);
      }
    });
    return nullptr;
  });
}

template OrtStatus* ComputeCpuNhwc<float>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpuNhwc<half>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;
template OrtStatus* ComputeCpuNhwc<double>(const NodeContext&, const Attrs&, OrtKernelContext*) noexcept;

}  // namespace gn
}  // namespace normexport
