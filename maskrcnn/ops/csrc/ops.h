// The device-specific entry points of the native ops, called by bindings.cpp after it has checked
// the arguments that do not depend on the device (ranks, shapes, dtypes, matching devices).
//
// Conventions shared by every function here:
//   input       (N, C, H, W) feature maps, float32 / float64 / float16 / bfloat16
//   rois        (K, 5) [batch_index, x1, y1, x2, y2] in input-image pixels, same dtype as input
//   output      (K, C, out_h, out_w), same dtype as input
//   boxes       (N, 4) [x1, y1, x2, y2], no "+1" (width = x2 - x1); scores (N,), any float dtype
//   nms returns int64 indices into boxes of the kept boxes, in decreasing score order
// Non-contiguous tensors are accepted (each function makes its own contiguous copy).
#pragma once

#include <ATen/core/Tensor.h>

namespace maskrcnn {

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t out_h, int64_t out_w,
                                 int64_t sampling_ratio, bool aligned);

// grad_output (K, C, out_h, out_w) -> grad_input (batch_size, channels, height, width).
at::Tensor roi_align_backward_cpu(const at::Tensor& grad_output, const at::Tensor& rois,
                                  double spatial_scale, int64_t out_h, int64_t out_w,
                                  int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width, int64_t sampling_ratio, bool aligned);

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);

#ifdef WITH_CUDA
at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t out_h, int64_t out_w,
                                  int64_t sampling_ratio, bool aligned);

at::Tensor roi_align_backward_cuda(const at::Tensor& grad_output, const at::Tensor& rois,
                                   double spatial_scale, int64_t out_h, int64_t out_w,
                                   int64_t batch_size, int64_t channels, int64_t height,
                                   int64_t width, int64_t sampling_ratio, bool aligned);

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
#endif

}  // namespace maskrcnn
