// Launch functions of the CUDA kernels in roi_align_kernel.cu and nms_kernel.cu.
//
// Plain C++ over raw pointers, sizes and a cudaStream_t (no ATen), so the kernel files compile
// with nvcc and the CUDA toolkit alone. The ATen-facing glue (roi_align_cuda.cpp, nms_cuda.cpp)
// checks the tensors, picks the dtype, the device and the current stream, and calls these.
// Each launcher returns the launch's error code (cudaSuccess when nothing went wrong).
//
// T is one of float, double, __half, __nv_bfloat16 (the CUDA spellings of c10::Half and
// c10::BFloat16, which have the same layout). Sums are accumulated in AccumulateType<T>.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace maskrcnn {
namespace cuda {

// float for float and the 16-bit types, double for double.
template <typename T>
struct AccumulateType {
  using type = float;
};
template <>
struct AccumulateType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccumulateType<T>::type;

// input (batch_size, channels, height, width) and rois (num_rois, 5), contiguous, on the device;
// output (num_rois, channels, out_h, out_w). ROIs whose batch index is outside [0, batch_size)
// produce zeros (the kernel cannot raise; the CPU path raises instead).
template <typename T>
cudaError_t launch_roi_align_forward(const T* input, const T* rois, int64_t num_rois,
                                     int64_t batch_size, int64_t channels, int height, int width,
                                     double spatial_scale, int out_h, int out_w,
                                     int sampling_ratio, bool aligned, T* output,
                                     cudaStream_t stream);

// grad_output (num_rois, channels, out_h, out_w) -> adds into grad_input_acc, a zero-initialised
// (batch_size, channels, height, width) buffer in the accumulation type. Overlapping ROIs add into
// the same pixels, so the adds are atomic; accumulating in float (not in __half) keeps the many
// small contributions from being rounded away.
template <typename T>
cudaError_t launch_roi_align_backward(const T* grad_output, const T* rois, int64_t num_rois,
                                      int64_t batch_size, int64_t channels, int height, int width,
                                      double spatial_scale, int out_h, int out_w,
                                      int sampling_ratio, bool aligned, acc_t<T>* grad_input_acc,
                                      cudaStream_t stream);

// Boxes handled by one thread block of the NMS kernel: one bit each in a 64-bit word.
constexpr int kNmsBlockSize = 64;

// sorted_boxes (n, 4), contiguous, sorted by decreasing score; T is float or double.
// Fills mask (n, ceil(n / 64)): bit b of word (i, w) is set when box i suppresses box
// 64 * w + b, i.e. that box comes later in score order and their IoU exceeds iou_threshold.
// Only the words w >= i / 64 are written; the scan that reads the mask needs no others.
template <typename T>
cudaError_t launch_nms_mask(const T* sorted_boxes, int64_t n, double iou_threshold,
                            uint64_t* mask, cudaStream_t stream);

}  // namespace cuda
}  // namespace maskrcnn
