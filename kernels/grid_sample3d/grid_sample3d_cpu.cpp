// CPU twin of the CUDA kernel: same math header, float32, threaded with std::thread.
//
// Loop order: taps and weights are computed once per output voxel for a tile of voxels,
// then channels are swept over the tile (see run_range for why not voxel by voxel).
//
// std::thread rather than OpenMP: the library is loaded into processes (PyTorch wheels)
// that carry their own, renamed OpenMP runtime, and two spinning OpenMP pools on the same
// cores oversubscribe them.
#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "frvd_grid_sample3d.h"
#include "grid_sample3d_internal.h"
#include "grid_sample3d_math.h"

namespace frvd {
namespace {

// Below this many output elements per thread, starting a thread costs more than it saves.
constexpr int64_t kMinElementsPerThread = 1 << 15;

struct Job {
  const float* input;
  const float* grid;
  float* output;
  Shape5D s;
  SampleOptions opt;
};

// Voxels per tile: their taps (~17 KiB, half of it only touched at the volume's edge)
// stay in L1 while every channel is swept.
constexpr int kTile = 128;
// Channels swept together per voxel; 4 keeps the streams per pass at 4 outputs and
// 16 input rows, few enough for the hardware prefetchers.
constexpr int kChannelBlock = 4;

// Taps of one tile of output voxels. count == 8 marks an interior voxel whose taps are
// base + {0, 1, W, W+1, HW, HW+1, HW+W, HW+W+1} with weights wt[0..7][i]; otherwise
// off[i][0..count) and wt[0..count)[i] hold the in-range taps in ATen's order (0 taps =
// all outside = output 0). For nearest mode base is the voxel offset or -1. Weights are
// stored structure-of-arrays so the tap pass vectorises.
struct TileTaps {
  int64_t base[kTile];
  int count[kTile];
  int32_t x0[kTile], y0[kTile], z0[kTile];
  float gx[kTile], gy[kTile], gz[kTile];
  float wt[8][kTile];
  int64_t off[kTile][8];
};

template <int kMode, int kPad, bool kAlign>
void compute_tile_taps(const float* __restrict g, int len, const Shape5D& s, TileTaps& __restrict t) {
  if (kMode == kModeNearest) {
    for (int i = 0; i < len; ++i, g += 3) {
      const float ix = grid_sampler_compute_source_index(g[0], s.w, kPad, kAlign);
      const float iy = grid_sampler_compute_source_index(g[1], s.h, kPad, kAlign);
      const float iz = grid_sampler_compute_source_index(g[2], s.d, kPad, kAlign);
      t.base[i] = nearest_offset(ix, iy, iz, s.d, s.h, s.w);
    }
    return;
  }
  // Pass 1, branch-free so the compiler vectorises it (4 voxels per SSE op): corners and
  // all eight weights. De-interleaving the xyz grid first turns stride-3 loads into
  // unit-stride ones; the extents live in locals so stores to `t` cannot alias them.
  const int64_t W = s.w, H = s.h, D = s.d;
  for (int i = 0; i < len; ++i) {
    t.gx[i] = g[3 * i];
    t.gy[i] = g[3 * i + 1];
    t.gz[i] = g[3 * i + 2];
  }
  for (int i = 0; i < len; ++i) {
    const float ix = grid_sampler_compute_source_index(t.gx[i], W, kPad, kAlign);
    const float iy = grid_sampler_compute_source_index(t.gy[i], H, kPad, kAlign);
    const float iz = grid_sampler_compute_source_index(t.gz[i], D, kPad, kAlign);
    const TrilinearCorners corners = trilinear_corners(ix, iy, iz);
    trilinear_weights(corners, &t.wt[0][i], kTile);
    t.x0[i] = corners.x.i0;
    t.y0[i] = corners.y.i0;
    t.z0[i] = corners.z.i0;
  }
  // Pass 2: interior test, and per-tap bounds only for voxels at the volume's edge.
  for (int i = 0; i < len; ++i) {
    TrilinearCorners corners;
    corners.x.i0 = t.x0[i];
    corners.y.i0 = t.y0[i];
    corners.z.i0 = t.z0[i];
    if (trilinear_interior(corners, s.d, s.h, s.w)) {
      t.count[i] = 8;
      t.base[i] = (static_cast<int64_t>(corners.z.i0) * s.h + corners.y.i0) * s.w + corners.x.i0;
      continue;
    }
    int count = 0;
    for (int k = 0; k < 8; ++k) {
      const int64_t x = corners.x.i0 + (k & 1);
      const int64_t y = corners.y.i0 + ((k >> 1) & 1);
      const int64_t z = corners.z.i0 + ((k >> 2) & 1);
      if (in_bounds(x, s.w) && in_bounds(y, s.h) && in_bounds(z, s.d)) {
        t.off[i][count] = (z * s.h + y) * s.w + x;
        t.wt[count][i] = t.wt[k][i];  // compaction in place: count <= k
        ++count;
      }
    }
    t.count[i] = count;
  }
}

// kCB channel planes of one tile (kCB = 1 for the remainder). Sharing the voxel loop
// across a few channels loads each voxel's base and weights once per kCB outputs.
// Out-of-range taps are skipped, not weighted by zero, exactly as ATen does, so a
// non-finite value elsewhere in the plane cannot leak in.
template <int kCB>
inline void trilinear_tile_channels(const float* plane, float* out, int64_t S, int64_t P,
                                    const TileTaps& t, int len, int64_t W, int64_t HW) {
  for (int i = 0; i < len; ++i) {
    if (t.count[i] == 8) {
      const float w0 = t.wt[0][i], w1 = t.wt[1][i], w2 = t.wt[2][i], w3 = t.wt[3][i];
      const float w4 = t.wt[4][i], w5 = t.wt[5][i], w6 = t.wt[6][i], w7 = t.wt[7][i];
      const float* src = plane + t.base[i];
      for (int cb = 0; cb < kCB; ++cb, src += S) {
        // Same summation order as ATen so results agree to the last bit.
        float acc = src[0] * w0;
        acc += src[1] * w1;
        acc += src[W] * w2;
        acc += src[W + 1] * w3;
        acc += src[HW] * w4;
        acc += src[HW + 1] * w5;
        acc += src[HW + W] * w6;
        acc += src[HW + W + 1] * w7;
        out[cb * P + i] = acc;
      }
    } else {
      const int count = t.count[i];
      for (int cb = 0; cb < kCB; ++cb) {
        const float* src = plane + cb * S;
        float acc = 0.f;
        for (int k = 0; k < count; ++k) {
          acc += src[t.off[i][k]] * t.wt[k][i];
        }
        out[cb * P + i] = acc;
      }
    }
  }
}

inline void nearest_tile_channel(const float* plane, float* out, const TileTaps& t, int len) {
  for (int i = 0; i < len; ++i) {
    out[i] = t.base[i] >= 0 ? plane[t.base[i]] : 0.f;
  }
}

// Output voxels [begin, end) of the flattened [N, Do, Ho, Wo] index space, tile by tile:
// taps once per voxel, then channel-outer / voxel-inner so each channel pass reads a few
// neighbouring input rows and writes one contiguous output run (prefetcher-friendly,
// unlike a per-voxel channel loop that keeps 4 * C input streams open at once).
// Mode, padding and align_corners are template parameters so the inner loops carry no
// dispatch branches and the tap pass can vectorise.
template <int kMode, int kPad, bool kAlign>
void run_range(const Job& job, int64_t begin, int64_t end) {
  const Shape5D& s = job.s;
  const int64_t P = s.out_spatial();
  const int64_t S = s.in_spatial();
  const int64_t HW = s.h * s.w;
  TileTaps taps;
  int64_t v = begin;
  while (v < end) {
    const int64_t n = v / P;
    const int64_t p = v - n * P;
    // Tiles never straddle two batch items.
    const int len = static_cast<int>(std::min<int64_t>({kTile, end - v, P - p}));
    compute_tile_taps<kMode, kPad, kAlign>(job.grid + v * 3, len, s, taps);
    const float* plane = job.input + n * s.c * S;
    float* out = job.output + n * s.c * P + p;
    if (kMode == kModeBilinear) {
      int64_t c = 0;
      for (; c + kChannelBlock <= s.c;
           c += kChannelBlock, plane += kChannelBlock * S, out += kChannelBlock * P) {
        trilinear_tile_channels<kChannelBlock>(plane, out, S, P, taps, len, s.w, HW);
      }
      for (; c < s.c; ++c, plane += S, out += P) {
        trilinear_tile_channels<1>(plane, out, S, P, taps, len, s.w, HW);
      }
    } else {
      for (int64_t c = 0; c < s.c; ++c, plane += S, out += P) {
        nearest_tile_channel(plane, out, taps, len);
      }
    }
    v += len;
  }
}

using RangeFn = void (*)(const Job&, int64_t, int64_t);

template <int kMode, bool kAlign>
RangeFn pick_padding(int padding) {
  switch (padding) {
    case kPadBorder:
      return run_range<kMode, kPadBorder, kAlign>;
    case kPadReflection:
      return run_range<kMode, kPadReflection, kAlign>;
    default:
      return run_range<kMode, kPadZeros, kAlign>;
  }
}

template <int kMode>
RangeFn pick_align(int padding, bool align_corners) {
  return align_corners ? pick_padding<kMode, true>(padding) : pick_padding<kMode, false>(padding);
}

}  // namespace

void grid_sample3d_cpu(const float* input, const float* grid, float* output, const Shape5D& s,
                       const SampleOptions& opt, int num_threads) {
  const Job job{input, grid, output, s, opt};
  const RangeFn run_range =
      opt.mode == kModeNearest ? pick_align<kModeNearest>(opt.padding, opt.align_corners)
                               : pick_align<kModeBilinear>(opt.padding, opt.align_corners);
  const int64_t voxels = s.n * s.out_spatial();
  int64_t threads = num_threads > 0 ? num_threads : std::max(1u, std::thread::hardware_concurrency());
  threads = std::min(threads, std::max<int64_t>(1, voxels * s.c / kMinElementsPerThread));
  threads = std::min(threads, voxels);
  if (threads <= 1) {
    run_range(job, 0, voxels);
    return;
  }
  // Chunks of a few tiles handed out from an atomic counter rather than one fixed slice
  // per thread: when a core is busy with another process, the threads that do run take
  // over its share instead of the call waiting for it. Chunks are contiguous, so grid
  // reads and output writes stay sequential within each.
  const int64_t chunk = std::max<int64_t>(8 * kTile, voxels / (threads * 16));
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t b = next.fetch_add(chunk); b < voxels; b = next.fetch_add(chunk)) {
      run_range(job, b, std::min(voxels, b + chunk));
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads - 1));
  for (int64_t t = 1; t < threads; ++t) {
    pool.emplace_back(worker);
  }
  worker();
  for (auto& th : pool) {
    th.join();
  }
}

}  // namespace frvd
