// ROIAlign forward and backward on the CPU.
//
// The sampling rules live in ../roi_align_sampling.h (shared with the CUDA kernel). This file
// adds the CPU strategy: the samples of one ROI (out_h * out_w bins times grid_h * grid_w
// bilinear taps) do not depend on the channel, so each ROI's "sample table" is built once and
// reused for every channel it is applied to.
//
//   forward:  parallel over output planes (roi, channel); a thread rebuilds the table only when
//             its range moves on to the next ROI.
//   backward: parallel over channels. Different ROIs scatter into the same input pixels, but a
//             thread owns whole channels of grad_input, so no two threads ever write the same
//             element: no atomics, no races, and the same summation order on every run.
//
// float16 / bfloat16 tensors are computed in float32 and converted back.
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
    const int64_t batch_index = static_cast<int64_t>(rois[k * 5]);
    TORCH_CHECK_INDEX(batch_index >= 0 && batch_index < batch_size, "roi_align: rois[", k,
                      ", 0] = ", rois[k * 5], " is not a batch index of an input with ",
                      batch_size, " images");
  }
}

template <typename T>
void forward_kernel(const T* input, const T* rois, int64_t num_rois, int64_t channels, int height,
                    int width, T spatial_scale, int out_h, int out_w, int sampling_ratio,
                    bool aligned, T* output) {
  const int64_t bins_per_plane = static_cast<int64_t>(out_h) * out_w;
  const int64_t plane_size = static_cast<int64_t>(height) * width;
  // Enough planes per task that thread start-up is negligible next to the interpolation work
  // (about 32k multiply-adds, counting a nominal 2x2 samples of 4 taps per bin).
  const int64_t grain = std::max<int64_t>(1, 32768 / (bins_per_plane * 16));
  at::parallel_for(0, num_rois * channels, grain, [&](int64_t begin, int64_t end) {
    std::vector<BilinearTaps<T>> table;
    RoiBins<T> bins{};
    int64_t table_roi = -1;
    for (int64_t plane = begin; plane < end; ++plane) {  // plane = roi * channels + channel
      const int64_t roi = plane / channels;
      const int64_t channel = plane % channels;
      if (roi != table_roi) {
        bins = roi_bins(rois + roi * 5, spatial_scale, out_h, out_w, sampling_ratio, aligned);
        build_sample_table(bins, out_h, out_w, height, width, table);
        table_roi = roi;
      }
      const T* in = input + (bins.batch_index * channels + channel) * plane_size;
      T* out = output + plane * bins_per_plane;
      const int64_t samples_per_bin = static_cast<int64_t>(bins.grid_h) * bins.grid_w;
      const BilinearTaps<T>* taps = table.data();
      for (int64_t bin = 0; bin < bins_per_plane; ++bin) {
        T sum = 0;
        for (int64_t s = 0; s < samples_per_bin; ++s, ++taps) {
          sum += taps->weight[0] * in[taps->index[0]] + taps->weight[1] * in[taps->index[1]] +
                 taps->weight[2] * in[taps->index[2]] + taps->weight[3] * in[taps->index[3]];
        }
        out[bin] = sum / bins.count;
      }
    }
  });
}

template <typename T>
void backward_kernel(const T* grad_output, const T* rois, int64_t num_rois, int64_t channels,
                     int height, int width, T spatial_scale, int out_h, int out_w,
                     int sampling_ratio, bool aligned, T* grad_input) {
  const int64_t bins_per_plane = static_cast<int64_t>(out_h) * out_w;
  const int64_t plane_size = static_cast<int64_t>(height) * width;
  // Each task owns the channels [begin, end) of grad_input for every image and every ROI.
  at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<BilinearTaps<T>> table;
    for (int64_t roi = 0; roi < num_rois; ++roi) {
      const RoiBins<T> bins =
          roi_bins(rois + roi * 5, spatial_scale, out_h, out_w, sampling_ratio, aligned);
      build_sample_table(bins, out_h, out_w, height, width, table);
      const int64_t samples_per_bin = static_cast<int64_t>(bins.grid_h) * bins.grid_w;
      for (int64_t channel = begin; channel < end; ++channel) {
        const T* grad_out = grad_output + (roi * channels + channel) * bins_per_plane;
        T* grad_in = grad_input + (bins.batch_index * channels + channel) * plane_size;
        const BilinearTaps<T>* taps = table.data();
        for (int64_t bin = 0; bin < bins_per_plane; ++bin) {
          const T grad_bin = grad_out[bin];
          for (int64_t s = 0; s < samples_per_bin; ++s, ++taps) {
            // d(bin value) / d(pixel) = weight / count for each tap (the bin is an average).
            for (int corner = 0; corner < 4; ++corner) {
              grad_in[taps->index[corner]] += grad_bin * taps->weight[corner] / bins.count;
            }
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
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  const int64_t num_rois = rois_c.size(0);
  const int64_t channels = input_c.size(1);
  at::Tensor output = at::empty({num_rois, channels, out_h, out_w}, input_c.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES(input_c.scalar_type(), "roi_align_forward_cpu", [&] {
    check_batch_indices(rois_c.const_data_ptr<scalar_t>(), num_rois, input_c.size(0));
    forward_kernel<scalar_t>(input_c.const_data_ptr<scalar_t>(), rois_c.const_data_ptr<scalar_t>(),
                             num_rois, channels, static_cast<int>(input_c.size(2)),
                             static_cast<int>(input_c.size(3)),
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
  at::Tensor grad_input =
      at::zeros({batch_size, channels, height, width}, grad_output_c.options());
  if (num_rois == 0 || grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES(grad_output_c.scalar_type(), "roi_align_backward_cpu", [&] {
    check_batch_indices(rois_c.const_data_ptr<scalar_t>(), num_rois, batch_size);
    backward_kernel<scalar_t>(grad_output_c.const_data_ptr<scalar_t>(),
                              rois_c.const_data_ptr<scalar_t>(), num_rois, channels,
                              static_cast<int>(height), static_cast<int>(width),
                              static_cast<scalar_t>(spatial_scale), static_cast<int>(out_h),
                              static_cast<int>(out_w), static_cast<int>(sampling_ratio), aligned,
                              grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

}  // namespace maskrcnn
