// ROIAlign forward and backward on the CPU.
//
// The sampling rules live in ../roi_align_sampling.h (shared with the CUDA kernel). This file
// adds the CPU strategy, built around two facts:
//   * the samples of one ROI (out_h * out_w bins times grid_h * grid_w bilinear taps) do not
//     depend on the channel, so each ROI's "sample table" is built once and used for all channels;
//   * with the feature map in channels-last layout (N, H, W, C), one tap reads C consecutive
//     values, so the channel loop is a contiguous, vectorizable multiply-add. In the (N, C, H, W)
//     layout the same tap touches C cache lines one plane apart, and the kernel waits on memory.
// So the forward pass works on an (N, H, W, C) copy of the input (none is made when the input is
// already channels_last), and the backward pass accumulates the gradient in an (N, H, W, C)
// buffer and transposes it into the (N, C, H, W) result, with a cache-blocked transpose (ATen's
// strided copy in that direction is about three times slower).
//
// Threads: at::parallel_for, i.e. OpenMP threads, as many as torch.set_num_threads. It is an inline
// OpenMP loop, so this file must be compiled and linked with torch's OpenMP flag (setup.py passes
// -fopenmp); without it every loop below runs on one thread (tests/ops/test_native_threads.py).
//   forward:  parallel over ROIs; a ROI's output block (C x out_h x out_w) stays in cache.
//   backward: parallel over channel ranges. Different ROIs scatter into the same input pixels,
//             but a thread owns a range of channels of grad_input, so no two threads ever write
//             the same element: no atomics, no races, and the same summation order on every run
//             and for any number of threads.
// Per channel, the arithmetic (and its order) is that of torchvision's CPU kernel, so results
// agree with it to the last bit. float16 / bfloat16 tensors are computed in float32.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "../ops.h"
#include "../roi_align_sampling.h"

namespace maskrcnn {
namespace {

// The taps of every sample of every bin of one ROI, bin-major: entry
// (bin * samples_per_bin + iy * grid_w + ix) with bin = ph * out_w + pw.
template <typename T>
void build_sample_table(const RoiBins<T>& bins, int out_h, int out_w, int height, int width,
                        std::vector<BilinearTaps<T>>& table) {
  table.clear();
  table.reserve(static_cast<size_t>(out_h) * out_w * bins.grid_h * bins.grid_w);
  BilinearTaps<T> taps;
  for (int ph = 0; ph < out_h; ++ph) {
    for (int pw = 0; pw < out_w; ++pw) {
      for (int iy = 0; iy < bins.grid_h; ++iy) {
        const T y = sample_y(bins, ph, iy);
        for (int ix = 0; ix < bins.grid_w; ++ix) {
          bilinear_taps(y, sample_x(bins, pw, ix), height, width, taps);
          table.push_back(taps);
        }
      }
    }
  }
}

// Raises (with the offending row) unless every rois[k, 0] names an image of the batch: a wrong
// batch index would otherwise read or write outside the feature map.
template <typename T>
void check_batch_indices(const T* rois, int64_t num_rois, int64_t batch_size) {
  for (int64_t k = 0; k < num_rois; ++k) {
    // tested before the cast: a NaN would pass a test on the cast value (undefined behaviour)
    const bool valid = valid_batch_number(rois[k * 5]) &&
                       static_cast<int64_t>(rois[k * 5]) < batch_size;
    TORCH_CHECK_INDEX(valid, "roi_align: rois[", k, ", 0] = ", rois[k * 5],
                      " is not a batch index of an input with ", batch_size, " images");
  }
}

// input_nhwc: (N, H, W, C) contiguous; output: (K, C, out_h, out_w) contiguous.
// dst (cols, rows) = the transpose of src (rows, cols); both contiguous. Square tiles keep the
// reads and the writes of a tile inside the L1 cache; tasks own disjoint bands of rows of src.
template <typename T>
void transpose(const T* src, int64_t rows, int64_t cols, T* dst) {
  constexpr int64_t kTile = 32;
  at::parallel_for(0, (rows + kTile - 1) / kTile, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r0 = begin * kTile; r0 < std::min(end * kTile, rows); r0 += kTile) {
      const int64_t r1 = std::min(r0 + kTile, rows);
      for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
        const int64_t c1 = std::min(c0 + kTile, cols);
        for (int64_t c = c0; c < c1; ++c) {
          for (int64_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * cols + c];
        }
      }
    }
  });
}

template <typename T>
void forward_kernel(const T* input_nhwc, const T* rois, int64_t num_rois, int64_t channels,
                    int height, int width, T spatial_scale, int out_h, int out_w,
                    int sampling_ratio, bool aligned, T* output) {
  const int64_t bins_per_plane = static_cast<int64_t>(out_h) * out_w;
  const int64_t image_size = static_cast<int64_t>(height) * width * channels;
  at::parallel_for(0, num_rois, 1, [&](int64_t begin, int64_t end) {
    std::vector<BilinearTaps<T>> table;
    std::vector<T> sums(channels);
    T* sum = sums.data();
    for (int64_t roi = begin; roi < end; ++roi) {
      const RoiBins<T> bins =
          roi_bins(rois + roi * 5, spatial_scale, out_h, out_w, sampling_ratio, aligned);
      build_sample_table(bins, out_h, out_w, height, width, table);
      const int64_t samples_per_bin = static_cast<int64_t>(bins.grid_h) * bins.grid_w;
      const T* image = input_nhwc + bins.batch_index * image_size;
      T* out = output + roi * channels * bins_per_plane;
      const BilinearTaps<T>* taps = table.data();
      for (int64_t bin = 0; bin < bins_per_plane; ++bin) {
        std::fill(sums.begin(), sums.end(), T(0));
        for (int64_t s = 0; s < samples_per_bin; ++s, ++taps) {
          const T* p0 = image + taps->index[0] * channels;  // pixel -> its C channel values
          const T* p1 = image + taps->index[1] * channels;
          const T* p2 = image + taps->index[2] * channels;
          const T* p3 = image + taps->index[3] * channels;
          const T w0 = taps->weight[0], w1 = taps->weight[1];
          const T w2 = taps->weight[2], w3 = taps->weight[3];
          for (int64_t c = 0; c < channels; ++c) {
            sum[c] += w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c];
          }
        }
        for (int64_t c = 0; c < channels; ++c) out[c * bins_per_plane + bin] = sum[c] / bins.count;
      }
    }
  });
}

// grad_output: (K, C, out_h, out_w) contiguous; grad_input_nhwc: (N, H, W, C), zeroed.
template <typename T>
void backward_kernel(const T* grad_output, const T* rois, int64_t num_rois, int64_t channels,
                     int height, int width, T spatial_scale, int out_h, int out_w,
                     int sampling_ratio, bool aligned, T* grad_input_nhwc) {
  const int64_t bins_per_plane = static_cast<int64_t>(out_h) * out_w;
  const int64_t image_size = static_cast<int64_t>(height) * width * channels;
  // Each task owns the channels [first, last) of grad_input, for every image and every ROI;
  // at least 16 channels per task keep the inner loop vector-wide.
  at::parallel_for(0, channels, 16, [&](int64_t first, int64_t last) {
    const int64_t span = last - first;
    std::vector<BilinearTaps<T>> table;
    std::vector<T> grad_bins(span);
    T* grad_bin = grad_bins.data();
    for (int64_t roi = 0; roi < num_rois; ++roi) {
      const RoiBins<T> bins =
          roi_bins(rois + roi * 5, spatial_scale, out_h, out_w, sampling_ratio, aligned);
      build_sample_table(bins, out_h, out_w, height, width, table);
      const int64_t samples_per_bin = static_cast<int64_t>(bins.grid_h) * bins.grid_w;
      T* image = grad_input_nhwc + bins.batch_index * image_size + first;
      const T* grad_out = grad_output + (roi * channels + first) * bins_per_plane;
      const BilinearTaps<T>* taps = table.data();
      for (int64_t bin = 0; bin < bins_per_plane; ++bin) {
        for (int64_t c = 0; c < span; ++c) grad_bin[c] = grad_out[c * bins_per_plane + bin];
        for (int64_t s = 0; s < samples_per_bin; ++s, ++taps) {
          for (int corner = 0; corner < 4; ++corner) {
            // d(bin value) / d(pixel) = weight / count for each tap (the bin is an average)
            T* pixel = image + taps->index[corner] * channels;
            const T weight = taps->weight[corner];
            for (int64_t c = 0; c < span; ++c) pixel[c] += grad_bin[c] * weight / bins.count;
          }
        }
      }
    }
  });
}

bool is_reduced_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

}  // namespace

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t out_h, int64_t out_w,
                                 int64_t sampling_ratio, bool aligned) {
  if (is_reduced_float(input)) {
    return roi_align_forward_cpu(input.to(at::kFloat), rois.to(at::kFloat), spatial_scale, out_h,
                                 out_w, sampling_ratio, aligned)
        .to(input.scalar_type());
  }
  const at::Tensor rois_c = rois.contiguous();
  const int64_t num_rois = rois_c.size(0);
  const int64_t channels = input.size(1);
  at::Tensor output = at::empty({num_rois, channels, out_h, out_w}, input.options());
  if (output.numel() == 0) return output;
  const int64_t batch_size = input.size(0), pixels = input.size(2) * input.size(3);
  // The kernel reads (N, H, W, C): a channels_last input already is that (as a permuted view);
  // any other input is made contiguous and each image transposed, (C, H*W) -> (H*W, C).
  at::Tensor input_nhwc = input.permute({0, 2, 3, 1});
  const bool transposed = !input_nhwc.is_contiguous();
  const at::Tensor input_c = transposed ? input.contiguous() : input;
  if (transposed) input_nhwc = at::empty({batch_size, input.size(2), input.size(3), channels},
                                         input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_align_forward_cpu", [&] {
    check_batch_indices(rois_c.const_data_ptr<scalar_t>(), num_rois, batch_size);
    for (int64_t n = 0; transposed && n < batch_size; ++n) {
      transpose(input_c.const_data_ptr<scalar_t>() + n * channels * pixels, channels, pixels,
                input_nhwc.mutable_data_ptr<scalar_t>() + n * pixels * channels);
    }
    forward_kernel<scalar_t>(input_nhwc.const_data_ptr<scalar_t>(),
                             rois_c.const_data_ptr<scalar_t>(), num_rois, channels,
                             static_cast<int>(input.size(2)), static_cast<int>(input.size(3)),
                             static_cast<scalar_t>(spatial_scale), static_cast<int>(out_h),
                             static_cast<int>(out_w), static_cast<int>(sampling_ratio), aligned,
                             output.mutable_data_ptr<scalar_t>());
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad_output, const at::Tensor& rois,
                                  double spatial_scale, int64_t out_h, int64_t out_w,
                                  int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width, int64_t sampling_ratio, bool aligned) {
  if (is_reduced_float(grad_output)) {
    return roi_align_backward_cpu(grad_output.to(at::kFloat), rois.to(at::kFloat), spatial_scale,
                                  out_h, out_w, batch_size, channels, height, width,
                                  sampling_ratio, aligned)
        .to(grad_output.scalar_type());
  }
  const at::Tensor grad_output_c = grad_output.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  const int64_t num_rois = rois_c.size(0);
  if (num_rois == 0 || batch_size * channels * height * width == 0) {
    return at::zeros({batch_size, channels, height, width}, grad_output_c.options());
  }
  // accumulated as (N, H, W, C), then transposed into the (N, C, H, W) result
  at::Tensor grad_input_nhwc =
      at::zeros({batch_size, height, width, channels}, grad_output_c.options());
  at::Tensor grad_input = at::empty({batch_size, channels, height, width}, grad_output_c.options());
  const int64_t pixels = height * width;
  AT_DISPATCH_FLOATING_TYPES(grad_output_c.scalar_type(), "roi_align_backward_cpu", [&] {
    check_batch_indices(rois_c.const_data_ptr<scalar_t>(), num_rois, batch_size);
    backward_kernel<scalar_t>(grad_output_c.const_data_ptr<scalar_t>(),
                              rois_c.const_data_ptr<scalar_t>(), num_rois, channels,
                              static_cast<int>(height), static_cast<int>(width),
                              static_cast<scalar_t>(spatial_scale), static_cast<int>(out_h),
                              static_cast<int>(out_w), static_cast<int>(sampling_ratio), aligned,
                              grad_input_nhwc.mutable_data_ptr<scalar_t>());
    for (int64_t n = 0; n < batch_size; ++n) {  // each image: (H*W, C) -> (C, H*W)
      transpose(grad_input_nhwc.const_data_ptr<scalar_t>() + n * pixels * channels, pixels,
                channels, grad_input.mutable_data_ptr<scalar_t>() + n * channels * pixels);
    }
  });
  return grad_input;
}

}  // namespace maskrcnn
