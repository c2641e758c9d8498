/* C ABI of libfrvd_kernels: 5-D grid sampling with the semantics of
 * torch.nn.functional.grid_sample on [N, C, D, H, W] input and [N, Do, Ho, Wo, 3] grid
 * (xyz order). Plain C so that ctypes, cuda-python and a TensorRT plugin can call it
 * with raw pointers; every tensor must be contiguous (NCDHW input and output, NDHW3 grid).
 *
 * Bump FRVD_KERNELS_ABI_VERSION whenever a signature or an enum value changes: the
 * Python loader refuses a library whose version differs from the one it was written for.
 */
#ifndef FRVD_GRID_SAMPLE3D_H_
#define FRVD_GRID_SAMPLE3D_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FRVD_API __declspec(dllexport)
#else
#define FRVD_API __attribute__((visibility("default")))
#endif

#define FRVD_KERNELS_ABI_VERSION 1

enum frvd_status {
  FRVD_OK = 0,
  FRVD_ERR_NULL_POINTER = 1,
  FRVD_ERR_BAD_SHAPE = 2,
  FRVD_ERR_BAD_DTYPE = 3,
  FRVD_ERR_BAD_MODE = 4,
  FRVD_ERR_BAD_PADDING = 5,
  FRVD_ERR_NO_CUDA = 6, /* library was built without CUDA objects */
  FRVD_ERR_CUDA = 7     /* the launch itself failed (no device, bad stream, ...) */
};

enum frvd_dtype { FRVD_FLOAT32 = 0, FRVD_FLOAT16 = 1 };
enum frvd_mode { FRVD_MODE_BILINEAR = 0, FRVD_MODE_NEAREST = 1 };
enum frvd_padding { FRVD_PAD_ZEROS = 0, FRVD_PAD_BORDER = 1, FRVD_PAD_REFLECTION = 2 };

FRVD_API int frvd_kernels_abi_version(void);

/* 1 when the CUDA kernel was compiled into this library, else 0. */
FRVD_API int frvd_kernels_has_cuda(void);

/* Whether the CUDA kernel can launch here: FRVD_OK when a device is present, the driver's CUDA
 * major is at least the library's (CUDA minor-version compatibility: an older minor is fine) and a
 * no-op probe kernel launched and completed; FRVD_ERR_CUDA when there is no driver/device or the
 * driver's major is older; FRVD_CUDA_PROBE_BASE + the cudaError_t of a failed probe launch (e.g.
 * + 209, no kernel image for this GPU; + 222, PTX too new for the driver); FRVD_ERR_NO_CUDA
 * without CUDA objects. `runtime_version` / `driver_version` receive
 * cudaRuntimeGetVersion / cudaDriverGetVersion (1000 * major + 10 * minor; 0 = no driver),
 * `device_count` the visible devices. Any pointer may be NULL. Added without an ABI bump:
 * callers look the symbol up and treat its absence as "unknown". */
#define FRVD_CUDA_PROBE_BASE 1000
FRVD_API int frvd_cuda_check(int* runtime_version, int* driver_version, int* device_count);

/* Human-readable text for a status code (static storage, never NULL). */
FRVD_API const char* frvd_status_string(int status);

/* CUDA: device pointers; input, grid and output share `dtype` (float32 or float16, math
 * in float32). The kernel is enqueued on `stream` (a cudaStream_t, NULL = legacy default
 * stream) of the current device and the call returns without synchronising. */
FRVD_API int frvd_grid_sample3d(const void* input, const void* grid, void* output, int64_t n,
                                int64_t c, int64_t d, int64_t h, int64_t w, int64_t out_d,
                                int64_t out_h, int64_t out_w, int dtype, int mode,
                                int padding_mode, int align_corners, void* stream);

/* CPU twin: host float32 pointers, same math header. num_threads <= 0 uses every
 * hardware thread; small problems run on the calling thread only. */
FRVD_API int frvd_grid_sample3d_cpu(const float* input, const float* grid, float* output, int64_t n,
                                    int64_t c, int64_t d, int64_t h, int64_t w, int64_t out_d,
                                    int64_t out_h, int64_t out_w, int mode, int padding_mode,
                                    int align_corners, int num_threads);

#ifdef __cplusplus
}
#endif

#endif /* FRVD_GRID_SAMPLE3D_H_ */
