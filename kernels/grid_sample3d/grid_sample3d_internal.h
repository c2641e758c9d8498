// Glue shared by the C ABI (grid_sample3d_abi.cpp) and the two implementations.
#pragma once

#include <stdint.h>

namespace frvd {

struct Shape5D {
  int64_t n, c, d, h, w;     // input volume
  int64_t od, oh, ow;        // output (grid) spatial size
  int64_t in_spatial() const { return d * h * w; }
  int64_t out_spatial() const { return od * oh * ow; }
};

struct SampleOptions {
  int mode;
  int padding;
  bool align_corners;
};

// Returns an frvd_status code; both entry points validate through it so they reject
// exactly the same arguments.
int validate(const void* input, const void* grid, const void* output, const Shape5D& s, int mode,
             int padding);

void grid_sample3d_cpu(const float* input, const float* grid, float* output, const Shape5D& s,
                       const SampleOptions& opt, int num_threads);

#if defined(FRVD_WITH_CUDA)
// Enqueues the kernel on `stream`; returns an frvd_status code.
int grid_sample3d_cuda(const void* input, const void* grid, void* output, const Shape5D& s,
                       const SampleOptions& opt, int dtype, void* stream);
int cuda_check(int* runtime_version, int* driver_version, int* device_count);
#endif

}  // namespace frvd
