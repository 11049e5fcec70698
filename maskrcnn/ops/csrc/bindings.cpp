// The Python module maskrcnn.ops._C: argument checks and the choice between the CPU and the CUDA
// implementation. This is the only file that includes a torch Python header, and it includes the
// one it needs (<torch/csrc/utils/pybind.h>: pybind11 plus the at::Tensor type caster) rather
// than <torch/extension.h>, which pulls in the whole C++ frontend and compiles 3x slower. The
// kernels include the lighter ATen headers.
//
// Python reaches these functions through maskrcnn/ops/_native.py, which decides per call whether
// the native kernel or the pure-PyTorch reference runs, and wraps ROIAlign in an autograd Function.
// Errors: a wrong shape or value raises ValueError, a wrong dtype TypeError, a wrong device
// RuntimeError, each naming the op and the argument.
#include <torch/csrc/utils/pybind.h>

#include <limits>

#include "ops.h"

namespace maskrcnn {
namespace {

constexpr int64_t kIntMax = std::numeric_limits<int>::max();

void check_float_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                       dtype == at::kBFloat16,
                   op, ": `", name, "` must be float32, float64, float16 or bfloat16, got ", dtype);
}

void check_same_device_and_dtype(const char* op, const char* name_a, const at::Tensor& a,
                                 const char* name_b, const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), op, ": `", name_a, "` and `", name_b,
              "` must be on the same device, got ", a.device(), " and ", b.device());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op, ": `", name_a, "` and `", name_b,
                   "` must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

void check_device_supported(const char* op, const at::Tensor& t) {
#ifdef WITH_CUDA
  TORCH_CHECK(t.is_cpu() || t.is_cuda(), op, ": tensors on ", t.device(),
              " are not supported by the native kernels (CPU and CUDA only)");
#else
  TORCH_CHECK(t.is_cpu(), op, ": tensors on ", t.device(),
              " are not supported: this build of maskrcnn.ops._C has CPU kernels only "
              "(rebuild with a CUDA toolkit, see docs/native.md)");
#endif
}

void check_roi_align_args(const char* op, const at::Tensor& rois, double spatial_scale,
                          int64_t out_h, int64_t out_w) {
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5, op,
                    ": `rois` must have shape (K, 5) = [batch_index, x1, y1, x2, y2], got ",
                    rois.sizes());
  TORCH_CHECK_VALUE(out_h > 0 && out_w > 0 && out_h <= kIntMax && out_w <= kIntMax, op,
                    ": `output_size` must be positive, got (", out_h, ", ", out_w, ")");
  TORCH_CHECK_VALUE(spatial_scale > 0, op, ": `spatial_scale` must be positive, got ",
                    spatial_scale);
}

void check_feature_map_size(const char* op, int64_t height, int64_t width) {
  TORCH_CHECK_VALUE(height > 0 && width > 0 && height <= kIntMax && width <= kIntMax, op,
                    ": the feature map must have a positive height and width, got ", height, "x",
                    width);
}

// input (N, C, H, W), rois (K, 5) -> (K, C, out_h, out_w)
at::Tensor roi_align_forward(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                             int64_t out_h, int64_t out_w, int64_t sampling_ratio, bool aligned) {
  const char* op = "roi_align";
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": `input` must have shape (N, C, H, W), got ",
                    input.sizes());
  check_roi_align_args(op, rois, spatial_scale, out_h, out_w);
  check_float_dtype(op, "input", input);
  check_same_device_and_dtype(op, "input", input, "rois", rois);
  check_device_supported(op, input);
  if (rois.size(0) > 0) check_feature_map_size(op, input.size(2), input.size(3));
#ifdef WITH_CUDA
  if (input.is_cuda()) {
    return roi_align_forward_cuda(input, rois, spatial_scale, out_h, out_w, sampling_ratio,
                                  aligned);
  }
#endif
  return roi_align_forward_cpu(input, rois, spatial_scale, out_h, out_w, sampling_ratio, aligned);
}

// grad_output (K, C, out_h, out_w) -> grad_input (batch_size, channels, height, width)
at::Tensor roi_align_backward(const at::Tensor& grad_output, const at::Tensor& rois,
                              double spatial_scale, int64_t out_h, int64_t out_w,
                              int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                              int64_t sampling_ratio, bool aligned) {
  const char* op = "roi_align_backward";
  check_roi_align_args(op, rois, spatial_scale, out_h, out_w);
  TORCH_CHECK_VALUE(grad_output.dim() == 4 && grad_output.size(0) == rois.size(0) &&
                        grad_output.size(1) == channels && grad_output.size(2) == out_h &&
                        grad_output.size(3) == out_w,
                    op, ": `grad_output` must have shape (K, C, out_h, out_w) = (", rois.size(0),
                    ", ", channels, ", ", out_h, ", ", out_w, "), got ", grad_output.sizes());
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0, op,
                    ": batch_size and channels must be non-negative");
  check_float_dtype(op, "grad_output", grad_output);
  check_same_device_and_dtype(op, "grad_output", grad_output, "rois", rois);
  check_device_supported(op, grad_output);
  if (rois.size(0) > 0) check_feature_map_size(op, height, width);
#ifdef WITH_CUDA
  if (grad_output.is_cuda()) {
    return roi_align_backward_cuda(grad_output, rois, spatial_scale, out_h, out_w, batch_size,
                                   channels, height, width, sampling_ratio, aligned);
  }
#endif
  return roi_align_backward_cpu(grad_output, rois, spatial_scale, out_h, out_w, batch_size,
                                channels, height, width, sampling_ratio, aligned);
}

// boxes (N, 4), scores (N,) -> int64 indices of the kept boxes, in decreasing score order
at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  const char* op = "nms";
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, op,
                    ": `boxes` must have shape (N, 4) = [x1, y1, x2, y2], got ", boxes.sizes());
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == boxes.size(0), op,
                    ": `scores` must have shape (N,) with N = ", boxes.size(0), " boxes, got ",
                    scores.sizes());
  check_float_dtype(op, "boxes", boxes);
  check_float_dtype(op, "scores", scores);  // only sorted: its dtype may differ from boxes'
  TORCH_CHECK(boxes.device() == scores.device(), op,
              ": `boxes` and `scores` must be on the same device, got ", boxes.device(), " and ",
              scores.device());
  check_device_supported(op, boxes);
#ifdef WITH_CUDA
  if (boxes.is_cuda()) return nms_cuda(boxes, scores, iou_threshold);
#endif
  return nms_cpu(boxes, scores, iou_threshold);
}

}  // namespace
}  // namespace maskrcnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native ROIAlign and NMS kernels of maskrcnn (use them through maskrcnn.ops).";
  m.def("roi_align_forward", &maskrcnn::roi_align_forward,
        "ROIAlign forward: input (N, C, H, W), rois (K, 5) -> (K, C, out_h, out_w)",
        py::arg("input"), py::arg("rois"), py::arg("spatial_scale"), py::arg("out_h"),
        py::arg("out_w"), py::arg("sampling_ratio"), py::arg("aligned"));
  m.def("roi_align_backward", &maskrcnn::roi_align_backward,
        "ROIAlign backward: grad_output (K, C, out_h, out_w) -> grad_input (N, C, H, W)",
        py::arg("grad_output"), py::arg("rois"), py::arg("spatial_scale"), py::arg("out_h"),
        py::arg("out_w"), py::arg("batch_size"), py::arg("channels"), py::arg("height"),
        py::arg("width"), py::arg("sampling_ratio"), py::arg("aligned"));
  m.def("nms", &maskrcnn::nms,
        "Greedy NMS: boxes (N, 4), scores (N,) -> kept indices (int64), decreasing score",
        py::arg("boxes"), py::arg("scores"), py::arg("iou_threshold"));
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
