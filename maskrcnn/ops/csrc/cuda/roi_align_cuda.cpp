// ATen glue of the ROIAlign CUDA kernels: device guard, contiguous copies, dtype dispatch, the
// current stream, and launch-error checks. The kernels themselves are in roi_align_kernel.cu
// (plain CUDA); bindings.cpp has already checked shapes, dtypes and devices.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../ops.h"
#include "launchers.h"

namespace maskrcnn {
namespace {

// c10's scalar types -> the CUDA types the kernels are instantiated for (same layout).
template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<c10::Half> {
  using type = __half;
};
template <>
struct CudaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
const typename CudaType<T>::type* cuda_ptr(const at::Tensor& t) {
  return reinterpret_cast<const typename CudaType<T>::type*>(t.const_data_ptr<T>());
}

template <typename T>
typename CudaType<T>::type* cuda_mutable_ptr(at::Tensor& t) {
  return reinterpret_cast<typename CudaType<T>::type*>(t.mutable_data_ptr<T>());
}

}  // namespace

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t out_h, int64_t out_w,
                                  int64_t sampling_ratio, bool aligned) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  const int64_t num_rois = rois_c.size(0);
  const int64_t channels = input_c.size(1);
  at::Tensor output = at::empty({num_rois, channels, out_h, out_w}, input_c.options());
  if (output.numel() == 0) return output;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_c.scalar_type(),
                                  "roi_align_forward_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_roi_align_forward(
        cuda_ptr<scalar_t>(input_c), cuda_ptr<scalar_t>(rois_c), num_rois, input_c.size(0),
        channels, static_cast<int>(input_c.size(2)), static_cast<int>(input_c.size(3)),
        spatial_scale, static_cast<int>(out_h), static_cast<int>(out_w),
        static_cast<int>(sampling_ratio), aligned, cuda_mutable_ptr<scalar_t>(output), stream));
  });
  return output;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad_output, const at::Tensor& rois,
                                   double spatial_scale, int64_t out_h, int64_t out_w,
                                   int64_t batch_size, int64_t channels, int64_t height,
                                   int64_t width, int64_t sampling_ratio, bool aligned) {
  // The kernel adds with atomicAdd, in an order that varies from run to run: under
  // torch.use_deterministic_algorithms(True) this raises (or warns, with warn_only=True).
  at::globalContext().alertNotDeterministic("roi_align_backward_cuda");
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  const at::Tensor grad_output_c = grad_output.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  const int64_t num_rois = rois_c.size(0);
  // float64 accumulates in float64, every other dtype in float32 (see launchers.h)
  const at::ScalarType acc_dtype =
      grad_output_c.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_input_acc = at::zeros({batch_size, channels, height, width},
                                        grad_output_c.options().dtype(acc_dtype));
  if (num_rois > 0 && grad_input_acc.numel() > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output_c.scalar_type(),
                                    "roi_align_backward_cuda", [&] {
      using acc_type = cuda::acc_t<typename CudaType<scalar_t>::type>;
      C10_CUDA_CHECK(cuda::launch_roi_align_backward(
          cuda_ptr<scalar_t>(grad_output_c), cuda_ptr<scalar_t>(rois_c), num_rois, batch_size,
          channels, static_cast<int>(height), static_cast<int>(width), spatial_scale,
          static_cast<int>(out_h), static_cast<int>(out_w), static_cast<int>(sampling_ratio),
          aligned, grad_input_acc.mutable_data_ptr<acc_type>(), stream));
    });
  }
  return grad_input_acc.to(grad_output_c.scalar_type());  // a no-op for float32 and float64
}

}  // namespace maskrcnn
