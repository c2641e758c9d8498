// The exported C entry points: argument validation and dispatch only; the math lives in
// grid_sample3d_math.h and the loops in the CPU / CUDA translation units.
#include "frvd_grid_sample3d.h"
#include "grid_sample3d_internal.h"
#include "grid_sample3d_math.h"

namespace frvd {

int validate(const void* input, const void* grid, const void* output, const Shape5D& s, int mode,
             int padding) {
  if (s.n < 0 || s.c < 0 || s.od < 0 || s.oh < 0 || s.ow < 0) {
    return FRVD_ERR_BAD_SHAPE;
  }
  // Like ATen, an empty input volume cannot be sampled even when the output is empty.
  if (s.d <= 0 || s.h <= 0 || s.w <= 0) {
    return FRVD_ERR_BAD_SHAPE;
  }
  if (s.d > kMaxExtent || s.h > kMaxExtent || s.w > kMaxExtent) {
    return FRVD_ERR_BAD_SHAPE;
  }
  if (mode != FRVD_MODE_BILINEAR && mode != FRVD_MODE_NEAREST) {
    return FRVD_ERR_BAD_MODE;
  }
  if (padding != FRVD_PAD_ZEROS && padding != FRVD_PAD_BORDER && padding != FRVD_PAD_REFLECTION) {
    return FRVD_ERR_BAD_PADDING;
  }
  const bool empty = s.n == 0 || s.c == 0 || s.out_spatial() == 0;
  if (!empty && (input == nullptr || grid == nullptr || output == nullptr)) {
    return FRVD_ERR_NULL_POINTER;
  }
  return FRVD_OK;
}

}  // namespace frvd

extern "C" {

int frvd_kernels_abi_version(void) { return FRVD_KERNELS_ABI_VERSION; }

int frvd_kernels_has_cuda(void) {
#if defined(FRVD_WITH_CUDA)
  return 1;
#else
  return 0;
#endif
}

int frvd_cuda_check(int* runtime_version, int* driver_version, int* device_count) {
#if defined(FRVD_WITH_CUDA)
  return frvd::cuda_check(runtime_version, driver_version, device_count);
#else
  if (runtime_version != nullptr) *runtime_version = 0;
  if (driver_version != nullptr) *driver_version = 0;
  if (device_count != nullptr) *device_count = 0;
  return FRVD_ERR_NO_CUDA;
#endif
}

const char* frvd_status_string(int status) {
  switch (status) {
    case FRVD_OK:
      return "ok";
    case FRVD_ERR_NULL_POINTER:
      return "null data pointer for a non-empty tensor";
    case FRVD_ERR_BAD_SHAPE:
      return "invalid shape (negative size, empty input volume or a side above 2^30)";
    case FRVD_ERR_BAD_DTYPE:
      return "unsupported dtype (float32 or float16 on CUDA, float32 on CPU)";
    case FRVD_ERR_BAD_MODE:
      return "unsupported mode (bilinear or nearest)";
    case FRVD_ERR_BAD_PADDING:
      return "unsupported padding mode (zeros, border or reflection)";
    case FRVD_ERR_NO_CUDA:
      return "libfrvd_kernels was built without CUDA";
    case FRVD_ERR_CUDA:
      return "CUDA launch failed (no device, a driver older than the CUDA runtime the library was "
             "built with, or a bad stream)";
    default:
      return "unknown status";
  }
}

int frvd_grid_sample3d_cpu(const float* input, const float* grid, float* output, int64_t n, int64_t c,
                           int64_t d, int64_t h, int64_t w, int64_t out_d, int64_t out_h,
                           int64_t out_w, int mode, int padding_mode, int align_corners,
                           int num_threads) {
  const frvd::Shape5D s{n, c, d, h, w, out_d, out_h, out_w};
  const int status = frvd::validate(input, grid, output, s, mode, padding_mode);
  if (status != FRVD_OK) {
    return status;
  }
  if (n == 0 || c == 0 || s.out_spatial() == 0) {
    return FRVD_OK;
  }
  const frvd::SampleOptions opt{mode, padding_mode, align_corners != 0};
  frvd::grid_sample3d_cpu(input, grid, output, s, opt, num_threads);
  return FRVD_OK;
}

int frvd_grid_sample3d(const void* input, const void* grid, void* output, int64_t n, int64_t c,
                       int64_t d, int64_t h, int64_t w, int64_t out_d, int64_t out_h, int64_t out_w,
                       int dtype, int mode, int padding_mode, int align_corners, void* stream) {
  const frvd::Shape5D s{n, c, d, h, w, out_d, out_h, out_w};
  const int status = frvd::validate(input, grid, output, s, mode, padding_mode);
  if (status != FRVD_OK) {
    return status;
  }
  if (dtype != FRVD_FLOAT32 && dtype != FRVD_FLOAT16) {
    return FRVD_ERR_BAD_DTYPE;
  }
#if defined(FRVD_WITH_CUDA)
  if (n == 0 || c == 0 || s.out_spatial() == 0) {
    return FRVD_OK;
  }
  const frvd::SampleOptions opt{mode, padding_mode, align_corners != 0};
  return frvd::grid_sample3d_cuda(input, grid, output, s, opt, dtype, stream);
#else
  (void)stream;
  (void)align_corners;
  return FRVD_ERR_NO_CUDA;
#endif
}

}  // extern "C"
