// ROIAlign forward and backward CUDA kernels, in plain CUDA C++ (launchers in launchers.h).
//
// One thread per output element (roi, channel, ph, pw), in a grid-stride loop. The sampling
// rules come from ../roi_align_sampling.h, shared with the CPU kernel. Values are read in the
// storage type T and summed in acc_t<T> (float for float16 / bfloat16).
//
//   forward:  each thread averages the grid_h x grid_w bilinear samples of its bin.
//   backward: each thread spreads its bin's gradient over the pixels its samples read.
//             Different ROIs (and neighbouring bins) touch the same pixels, so the adds are
//             atomicAdd into an accumulation-type buffer (float or double; atomicAdd on double
//             needs compute capability 6.0 or newer).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../roi_align_sampling.h"
#include "launchers.h"

namespace maskrcnn {
namespace cuda {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int64_t kMaxBlocks = 8192;  // the grid-stride loop covers the rest

int64_t num_blocks(int64_t total) {
  return std::min<int64_t>((total + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks);
}

// Conversions between the storage type T and the accumulation type, spelled out. torch's
// BuildExtension compiles .cu files with -D__CUDA_NO_HALF_CONVERSIONS__ and
// -D__CUDA_NO_BFLOAT16_CONVERSIONS__ (torch.utils.cpp_extension.COMMON_NVCC_FLAGS), which remove
// the implicit conversions of __half and __nv_bfloat16, static_cast included.
__device__ __forceinline__ float to_acc(__half value) { return __half2float(value); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 value) { return __bfloat162float(value); }
__device__ __forceinline__ float to_acc(float value) { return value; }
__device__ __forceinline__ double to_acc(double value) { return value; }

// acc_t<T> -> T, rounding to nearest even.
template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> value) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(value);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(value);
  } else {
    return value;
  }
}

// The ROI's bins, with the five ROI numbers converted to the accumulation type first.
template <typename T>
__device__ RoiBins<acc_t<T>> load_roi_bins(const T* roi, acc_t<T> spatial_scale, int out_h,
                                           int out_w, int sampling_ratio, bool aligned) {
  acc_t<T> roi_acc[5];
  for (int i = 0; i < 5; ++i) roi_acc[i] = to_acc(roi[i]);
  return roi_bins(roi_acc, spatial_scale, out_h, out_w, sampling_ratio, aligned);
}

template <typename T>
__global__ void roi_align_forward_kernel(const T* input, const T* rois, int64_t total,
                                         int64_t batch_size, int64_t channels, int height,
                                         int width, acc_t<T> spatial_scale, int out_h, int out_w,
                                         int sampling_ratio, bool aligned, T* output) {
  using Acc = acc_t<T>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       index < total; index += stride) {
    // index -> (roi, channel, ph, pw): output is (K, C, out_h, out_w), contiguous
    const int pw = static_cast<int>(index % out_w);
    const int ph = static_cast<int>((index / out_w) % out_h);
    const int64_t channel = (index / out_w / out_h) % channels;
    const int64_t roi = index / out_w / out_h / channels;

    const RoiBins<Acc> bins =
        load_roi_bins(rois + roi * 5, spatial_scale, out_h, out_w, sampling_ratio, aligned);
    if (bins.batch_index < 0 || bins.batch_index >= batch_size) {
      output[index] = from_acc<T>(Acc(0));
      continue;
    }
    const T* in = input + (bins.batch_index * channels + channel) * height * width;
    Acc sum = 0;
    BilinearTaps<Acc> taps;
    for (int iy = 0; iy < bins.grid_h; ++iy) {
      const Acc y = sample_y(bins, ph, iy);
      for (int ix = 0; ix < bins.grid_w; ++ix) {
        if (!bilinear_taps(y, sample_x(bins, pw, ix), height, width, taps)) continue;
        sum += taps.weight[0] * to_acc(in[taps.index[0]]) +
               taps.weight[1] * to_acc(in[taps.index[1]]) +
               taps.weight[2] * to_acc(in[taps.index[2]]) +
               taps.weight[3] * to_acc(in[taps.index[3]]);
      }
    }
    output[index] = from_acc<T>(sum / bins.count);
  }
}

template <typename T>
__global__ void roi_align_backward_kernel(const T* grad_output, const T* rois, int64_t total,
                                          int64_t batch_size, int64_t channels, int height,
                                          int width, acc_t<T> spatial_scale, int out_h, int out_w,
                                          int sampling_ratio, bool aligned,
                                          acc_t<T>* grad_input) {
  using Acc = acc_t<T>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       index < total; index += stride) {
    // index -> (roi, channel, ph, pw): grad_output is (K, C, out_h, out_w), contiguous
    const int pw = static_cast<int>(index % out_w);
    const int ph = static_cast<int>((index / out_w) % out_h);
    const int64_t channel = (index / out_w / out_h) % channels;
    const int64_t roi = index / out_w / out_h / channels;

    const RoiBins<Acc> bins =
        load_roi_bins(rois + roi * 5, spatial_scale, out_h, out_w, sampling_ratio, aligned);
    if (bins.batch_index < 0 || bins.batch_index >= batch_size) continue;
    Acc* grad_in = grad_input + (bins.batch_index * channels + channel) * height * width;
    const Acc grad_bin = to_acc(grad_output[index]);
    BilinearTaps<Acc> taps;
    for (int iy = 0; iy < bins.grid_h; ++iy) {
      const Acc y = sample_y(bins, ph, iy);
      for (int ix = 0; ix < bins.grid_w; ++ix) {
        if (!bilinear_taps(y, sample_x(bins, pw, ix), height, width, taps)) continue;
        // d(bin value) / d(pixel) = weight / count for each tap (the bin is an average).
        for (int corner = 0; corner < 4; ++corner) {
          atomicAdd(grad_in + taps.index[corner], grad_bin * taps.weight[corner] / bins.count);
        }
      }
    }
  }
}

}  // namespace

template <typename T>
cudaError_t launch_roi_align_forward(const T* input, const T* rois, int64_t num_rois,
                                     int64_t batch_size, int64_t channels, int height, int width,
                                     double spatial_scale, int out_h, int out_w,
                                     int sampling_ratio, bool aligned, T* output,
                                     cudaStream_t stream) {
  const int64_t total = num_rois * channels * out_h * out_w;
  if (total == 0) return cudaSuccess;
  roi_align_forward_kernel<T><<<num_blocks(total), kThreadsPerBlock, 0, stream>>>(
      input, rois, total, batch_size, channels, height, width,
      static_cast<acc_t<T>>(spatial_scale), out_h, out_w, sampling_ratio, aligned, output);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_roi_align_backward(const T* grad_output, const T* rois, int64_t num_rois,
                                      int64_t batch_size, int64_t channels, int height, int width,
                                      double spatial_scale, int out_h, int out_w,
                                      int sampling_ratio, bool aligned, acc_t<T>* grad_input_acc,
                                      cudaStream_t stream) {
  const int64_t total = num_rois * channels * out_h * out_w;
  if (total == 0) return cudaSuccess;
  roi_align_backward_kernel<T><<<num_blocks(total), kThreadsPerBlock, 0, stream>>>(
      grad_output, rois, total, batch_size, channels, height, width,
      static_cast<acc_t<T>>(spatial_scale), out_h, out_w, sampling_ratio, aligned,
      grad_input_acc);
  return cudaGetLastError();
}

// The four storage types the glue dispatches to.
#define MASKRCNN_INSTANTIATE_ROI_ALIGN(T)                                                      \
  template cudaError_t launch_roi_align_forward<T>(const T*, const T*, int64_t, int64_t,       \
                                                   int64_t, int, int, double, int, int, int,   \
                                                   bool, T*, cudaStream_t);                    \
  template cudaError_t launch_roi_align_backward<T>(const T*, const T*, int64_t, int64_t,      \
                                                    int64_t, int, int, double, int, int, int,  \
                                                    bool, acc_t<T>*, cudaStream_t);
MASKRCNN_INSTANTIATE_ROI_ALIGN(float)
MASKRCNN_INSTANTIATE_ROI_ALIGN(double)
MASKRCNN_INSTANTIATE_ROI_ALIGN(__half)
MASKRCNN_INSTANTIATE_ROI_ALIGN(__nv_bfloat16)
#undef MASKRCNN_INSTANTIATE_ROI_ALIGN

}  // namespace cuda
}  // namespace maskrcnn
