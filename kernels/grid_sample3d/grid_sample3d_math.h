// Shared math of the 5-D grid sampler: the single source of truth for the CPU twin
// and the CUDA kernel. Every function mirrors ATen's GridSampler.h (CPU) step for step
// and in the same float operation order, so the CPU twin reproduces
// torch.nn.functional.grid_sample bit for bit (given -ffp-contract=off) and the CUDA
// kernel differs from it only where the device rounds differently.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define FRVD_HD __host__ __device__ __forceinline__
#else
#define FRVD_HD inline
#endif

namespace frvd {

// Values are part of the C ABI (frvd_grid_sample3d.h); never renumber.
enum Mode : int { kModeBilinear = 0, kModeNearest = 1 };
enum Padding : int { kPadZeros = 0, kPadBorder = 1, kPadReflection = 2 };

// [-1, 1] -> pixel space. align_corners=True maps -1/1 to the centres of the corner
// voxels, False maps them to the outer edges of the corner voxels.
FRVD_HD float unnormalize(float coord, int64_t size, bool align_corners) {
  if (align_corners) {
    return ((coord + 1.f) / 2.f) * static_cast<float>(size - 1);
  }
  return ((coord + 1.f) * static_cast<float>(size) - 1.f) / 2.f;
}

// Written as ATen's std::min(limit, std::max(in, 0)) including its NaN behaviour
// (a NaN coordinate ends up at size - 1), so border padding agrees even there.
FRVD_HD float clip_coordinates(float in, int64_t size) {
  const float lo = 0.f;
  const float hi = static_cast<float>(size - 1);
  const float m = (in < lo) ? lo : in;
  return (m < hi) ? m : hi;
}

// Reflects `in` into [twice_low / 2, twice_high / 2]; the bounds are passed doubled so
// that align_corners=False (bounds at -0.5 and size - 0.5) stays in integers.
FRVD_HD float reflect_coordinates(float in, int64_t twice_low, int64_t twice_high) {
  if (twice_low == twice_high) {
    return 0.f;
  }
  const float min = static_cast<float>(twice_low) / 2.f;
  const float span = static_cast<float>(twice_high - twice_low) / 2.f;
  in = fabsf(in - min);
  // fmodf keeps the sign of `in`, which is non-negative after fabsf.
  const float extra = fmodf(in, span);
  // ATen casts the flip count to int; the float parity agrees wherever that cast is
  // defined and stays defined for the huge counts where it is not.
  const float flips = floorf(in / span);
  if (fmodf(flips, 2.f) == 0.f) {
    return extra + min;
  }
  return span - extra + min;
}

FRVD_HD float compute_coordinates(float coord, int64_t size, int padding, bool align_corners) {
  if (padding == kPadBorder) {
    coord = clip_coordinates(coord, size);
  } else if (padding == kPadReflection) {
    if (align_corners) {
      coord = reflect_coordinates(coord, 0, 2 * (size - 1));
    } else {
      coord = reflect_coordinates(coord, -1, 2 * size - 1);
    }
    coord = clip_coordinates(coord, size);
  }
  return coord;
}

// Any coordinate below -2 or above size + 1 has every tap (floor, floor + 1, or the
// rounded index) outside [0, size - 1], so clamping it there changes no output but keeps
// the float -> int64 conversion defined for huge or non-finite grid values.
FRVD_HD float clamp_to_safe_range(float coord, int64_t size) {
  const float lo = -2.f;
  const float hi = static_cast<float>(size) + 1.f;
  coord = (coord >= lo) ? coord : lo;  // also maps NaN to lo
  return (coord > hi) ? hi : coord;
}

FRVD_HD float grid_sampler_compute_source_index(float coord, int64_t size, int padding,
                                                bool align_corners) {
  coord = unnormalize(coord, size, align_corners);
  coord = compute_coordinates(coord, size, padding, align_corners);
  return clamp_to_safe_range(coord, size);
}

FRVD_HD bool in_bounds(int64_t i, int64_t size) { return i >= 0 && i < size; }

// Largest D, H or W accepted (validated by the C ABI): keeps every clamped coordinate
// and corner index inside int32.
constexpr int64_t kMaxExtent = int64_t{1} << 30;

// floorf for a coordinate that went through clamp_to_safe_range (|x| < 2^30), written
// with a truncating conversion so the CPU twin's tap pass vectorises without SSE4.1;
// identical to floorf on that range (non-integral negatives truncate up, hence the -1).
FRVD_HD float floor_in_range(float x) {
  const float t = static_cast<float>(static_cast<int32_t>(x));
  return t > x ? t - 1.f : t;
}

// Index of the nearest voxel; nearbyintf honours the default round-half-to-even mode,
// as ATen's std::nearbyint does.
FRVD_HD int64_t nearest_index(float coord) { return static_cast<int64_t>(nearbyintf(coord)); }

// One axis of linear interpolation: taps at i0 and i0 + 1 with weights w0 and w1.
// `coord` must come from grid_sampler_compute_source_index (clamped).
struct LinearTaps1D {
  int32_t i0;
  float w0;
  float w1;
};

FRVD_HD LinearTaps1D linear_taps_1d(float coord) {
  const float f0 = floor_in_range(coord);
  LinearTaps1D t;
  t.i0 = static_cast<int32_t>(f0);
  // ATen computes (i0 + 1) - x and x - i0 with the integer corners cast back to float.
  t.w0 = (f0 + 1.f) - coord;
  t.w1 = coord - f0;
  return t;
}

// Per-axis corners and weights of one output voxel. Tap k (k = 4 dz + 2 dy + dx, ATen's
// tnw, tne, tsw, tse, bnw, bne, bsw, bse order) sits at (z0 + dz, y0 + dy, x0 + dx) and
// weighs (wx * wy) * wz, multiplied in that order as ATen does.
struct TrilinearCorners {
  LinearTaps1D x, y, z;
};

FRVD_HD TrilinearCorners trilinear_corners(float ix, float iy, float iz) {
  TrilinearCorners t;
  t.x = linear_taps_1d(ix);
  t.y = linear_taps_1d(iy);
  t.z = linear_taps_1d(iz);
  return t;
}

// True when all eight taps lie inside the volume (the common case for a dense warp),
// so callers can skip the per-tap bounds checks.
FRVD_HD bool trilinear_interior(const TrilinearCorners& t, int64_t D, int64_t H, int64_t W) {
  return t.x.i0 >= 0 && t.x.i0 + 1 < W && t.y.i0 >= 0 && t.y.i0 + 1 < H && t.z.i0 >= 0 &&
         t.z.i0 + 1 < D;
}

// The eight weights in tap order, written to w[0], w[stride], ..., w[7 * stride].
FRVD_HD void trilinear_weights(const TrilinearCorners& t, float* w, int64_t stride = 1) {
  const float xy00 = t.x.w0 * t.y.w0;
  const float xy10 = t.x.w1 * t.y.w0;
  const float xy01 = t.x.w0 * t.y.w1;
  const float xy11 = t.x.w1 * t.y.w1;
  w[0] = xy00 * t.z.w0;
  w[1 * stride] = xy10 * t.z.w0;
  w[2 * stride] = xy01 * t.z.w0;
  w[3 * stride] = xy11 * t.z.w0;
  w[4 * stride] = xy00 * t.z.w1;
  w[5 * stride] = xy10 * t.z.w1;
  w[6 * stride] = xy01 * t.z.w1;
  w[7 * stride] = xy11 * t.z.w1;
}

// The eight trilinear taps with per-tap bounds: `offset` is the element offset inside
// one [D, H, W] channel; invalid taps have offset 0 and weight 0 and must be skipped
// (ATen skips them, so a non-finite value elsewhere in the volume cannot leak in).
struct TrilinearTaps {
  int64_t offset[8];
  float weight[8];
  unsigned valid;  // bit k set when tap k lies inside the volume
};

FRVD_HD TrilinearTaps trilinear_taps(const TrilinearCorners& t, int64_t D, int64_t H, int64_t W) {
  TrilinearTaps taps;
  trilinear_weights(t, taps.weight);
  taps.valid = 0u;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int k = 0; k < 8; ++k) {
    const int64_t x = t.x.i0 + (k & 1);
    const int64_t y = t.y.i0 + ((k >> 1) & 1);
    const int64_t z = t.z.i0 + ((k >> 2) & 1);
    const bool ok = in_bounds(x, W) && in_bounds(y, H) && in_bounds(z, D);
    taps.weight[k] = ok ? taps.weight[k] : 0.f;
    taps.offset[k] = ok ? (z * H + y) * W + x : 0;
    taps.valid |= ok ? (1u << k) : 0u;
  }
  return taps;
}

// Offset of the nearest voxel inside one channel, or -1 when it lies outside.
FRVD_HD int64_t nearest_offset(float ix, float iy, float iz, int64_t D, int64_t H, int64_t W) {
  const int64_t x = nearest_index(ix);
  const int64_t y = nearest_index(iy);
  const int64_t z = nearest_index(iz);
  if (in_bounds(x, W) && in_bounds(y, H) && in_bounds(z, D)) {
    return (z * H + y) * W + x;
  }
  return -1;
}

}  // namespace frvd
