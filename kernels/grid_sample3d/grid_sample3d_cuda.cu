// CUDA kernel: float32 or float16 storage, float32 math and accumulation, NCDHW.
//
// Thread mapping: one thread per output voxel, looping over a group of channels. The
// taps and weights come from the shared math header once per thread; consecutive
// threads handle consecutive output voxels, so every channel's output store is coalesced
// and the gathers of a warp hit neighbouring cache lines for a smooth warp field.
// When N * Do * Ho * Wo alone would leave the GPU under-filled (1 x 16 x 64 x 64 = 65k
// threads against ~270k resident threads on an H100), channels are split across
// blockIdx.y so each thread does ceil(C / groups) channels; the tap math is repeated per
// group, which is cheap next to eight gathers per channel.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "frvd_grid_sample3d.h"
#include "grid_sample3d_internal.h"
#include "grid_sample3d_math.h"

namespace frvd {
namespace {

constexpr int kBlock = 256;

__global__ void probe_kernel() {}
// Enough threads to cover every SM of the largest target several times over.
constexpr int64_t kTargetThreads = int64_t{1} << 18;
// Fewer channels per thread than this would spend more time on tap math than on loads.
constexpr int64_t kMinChannelsPerThread = 4;

__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(__half* p, float v) { *p = __float2half_rn(v); }

struct Dims {
  int64_t n, c, d, h, w, od, oh, ow;
};

template <typename T, int kMode>
__global__ void __launch_bounds__(kBlock)
    grid_sample3d_kernel(const T* __restrict__ input, const T* __restrict__ grid, T* __restrict__ output,
                         Dims s, int padding, bool align_corners, int64_t channels_per_thread) {
  const int64_t P = s.od * s.oh * s.ow;
  const int64_t v = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (v >= s.n * P) {
    return;
  }
  const int64_t c_begin = static_cast<int64_t>(blockIdx.y) * channels_per_thread;
  const int64_t c_end = min(s.c, c_begin + channels_per_thread);
  const int64_t n = v / P;
  const int64_t p = v - n * P;
  const int64_t S = s.d * s.h * s.w;

  const T* g = grid + v * 3;
  const float ix = grid_sampler_compute_source_index(load_f(g), s.w, padding, align_corners);
  const float iy = grid_sampler_compute_source_index(load_f(g + 1), s.h, padding, align_corners);
  const float iz = grid_sampler_compute_source_index(load_f(g + 2), s.d, padding, align_corners);

  const T* src = input + (n * s.c + c_begin) * S;
  T* out = output + (n * s.c + c_begin) * P + p;
  if (kMode == kModeBilinear) {
    const TrilinearTaps taps = trilinear_taps(trilinear_corners(ix, iy, iz), s.d, s.h, s.w);
    for (int64_t c = c_begin; c < c_end; ++c, src += S, out += P) {
      float acc = 0.f;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        // Skip, not multiply by zero: an out-of-range tap must not read anything.
        if (taps.valid & (1u << k)) {
          acc += load_f(src + taps.offset[k]) * taps.weight[k];
        }
      }
      store_f(out, acc);
    }
  } else {
    const int64_t off = nearest_offset(ix, iy, iz, s.d, s.h, s.w);
    for (int64_t c = c_begin; c < c_end; ++c, src += S, out += P) {
      store_f(out, off >= 0 ? load_f(src + off) : 0.f);
    }
  }
}

template <typename T>
int launch(const void* input, const void* grid, void* output, const Shape5D& s, const SampleOptions& opt,
           cudaStream_t stream) {
  const int64_t voxels = s.n * s.out_spatial();
  const int64_t blocks_x = (voxels + kBlock - 1) / kBlock;
  if (blocks_x > 0x7fffffffLL) {
    return FRVD_ERR_BAD_SHAPE;
  }
  int64_t groups = 1;
  if (voxels < kTargetThreads) {
    const int64_t max_groups =
        std::max<int64_t>(1, (s.c + kMinChannelsPerThread - 1) / kMinChannelsPerThread);
    groups = std::min(max_groups, (kTargetThreads + voxels - 1) / voxels);
  }
  groups = std::min<int64_t>(groups, 65535);  // gridDim.y limit
  const int64_t per_thread = (s.c + groups - 1) / groups;
  groups = (s.c + per_thread - 1) / per_thread;

  const dim3 blocks(static_cast<unsigned>(blocks_x), static_cast<unsigned>(groups));
  const Dims d{s.n, s.c, s.d, s.h, s.w, s.od, s.oh, s.ow};
  const T* in = static_cast<const T*>(input);
  const T* gr = static_cast<const T*>(grid);
  T* out = static_cast<T*>(output);
  if (opt.mode == kModeBilinear) {
    grid_sample3d_kernel<T, kModeBilinear>
        <<<blocks, kBlock, 0, stream>>>(in, gr, out, d, opt.padding, opt.align_corners, per_thread);
  } else {
    grid_sample3d_kernel<T, kModeNearest>
        <<<blocks, kBlock, 0, stream>>>(in, gr, out, d, opt.padding, opt.align_corners, per_thread);
  }
  return cudaGetLastError() == cudaSuccess ? FRVD_OK : FRVD_ERR_CUDA;
}

}  // namespace

int grid_sample3d_cuda(const void* input, const void* grid, void* output, const Shape5D& s,
                       const SampleOptions& opt, int dtype, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (dtype == FRVD_FLOAT16) {
    return launch<__half>(input, grid, output, s, opt, st);
  }
  return launch<float>(input, grid, output, s, opt, st);
}

int cuda_check(int* runtime_version, int* driver_version, int* device_count) {
  // CUDA's minor-version compatibility (11.1+): a library built with toolkit X.Y runs on any driver of
  // major X or newer, even one that reports an older minor (e.g. built with 12.8, driver 550 reports
  // 12.4). So the versions only rule out an older driver MAJOR; whether the kernel really launches
  // (SASS for this GPU, or PTX the driver can JIT) is then decided by launching a no-op kernel.
  int runtime = 0, driver = 0, devices = 0;
  cudaRuntimeGetVersion(&runtime);
  const cudaError_t driver_status = cudaDriverGetVersion(&driver);
  const cudaError_t count_status = cudaGetDeviceCount(&devices);
  cudaGetLastError();  // clear the sticky-free error the failed queries may have left
  if (runtime_version != nullptr) *runtime_version = runtime;
  if (driver_version != nullptr) *driver_version = driver;
  if (device_count != nullptr) *device_count = count_status == cudaSuccess ? devices : 0;
  const bool versions_ok = driver_status == cudaSuccess && count_status == cudaSuccess && devices > 0 &&
                           driver / 1000 >= runtime / 1000;
  if (!versions_ok) return FRVD_ERR_CUDA;
  probe_kernel<<<1, 1>>>();
  cudaError_t launch = cudaGetLastError();
  if (launch == cudaSuccess) launch = cudaStreamSynchronize(nullptr);
  if (launch != cudaSuccess) {
    cudaGetLastError();
    return FRVD_CUDA_PROBE_BASE + static_cast<int>(launch);
  }
  return FRVD_OK;
}

}  // namespace frvd
