// Where ROIAlign samples the feature map and how it interpolates: the rules shared by the CPU
// kernel (cpu/roi_align_cpu.cpp) and the CUDA kernel (cuda/roi_align_kernel.cu), so the two
// cannot drift apart. Plain C++ (no ATen): the CUDA file includes it too.
//
// ROIAlign (Mask R-CNN, He et al. 2017, section 3 "RoIAlign"): an ROI is split into
// out_h x out_w bins; each bin averages grid_h x grid_w bilinearly interpolated samples placed at
// the centres of a regular sub-grid of the bin. The paper leaves the boundary rules open; these
// are torchvision's (the reference fixtures depend on them):
//   * coordinates are scaled by spatial_scale; aligned=True shifts them by -0.5 pixel (pixel
//     centres at integer + 0.5), aligned=False does not but raises the ROI's width and height
//     to at least 1 feature-map pixel;
//   * sampling_ratio > 0 gives that many samples per bin along each axis, otherwise
//     ceil(roi_height / out_h) by ceil(roi_width / out_w);
//   * a sample with y < -1 or y > H (or x < -1 or x > W) contributes 0; otherwise y and x are
//     clamped into [0, H-1] and [0, W-1] before interpolation;
//   * the bin's value is the sum over its samples divided by the number of samples, the zero
//     contributions included (and by 1 when the grid is empty).
// Non-finite boxes (torchvision leaves them undefined; a NaN reaching static_cast<int> is undefined
// behaviour and, on x86, an out-of-bounds read). Every test below is written so that NaN fails it:
//   * a sample whose y or x is NaN contributes 0, like one outside the map (so a box with a NaN or
//     infinite corner pools zeros and gets a zero gradient with a fixed sampling_ratio);
//   * an adaptive grid size that is NaN, negative or beyond int (an infinite box) is 0: the ROI
//     samples nothing and pools zeros;
//   * a batch index that is NaN or outside (-1, 2^31) becomes -1, "no image" (the CPU kernel
//     raises on it, the CUDA kernel writes zeros).
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define MASKRCNN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MASKRCNN_HOST_DEVICE inline
#endif

namespace maskrcnn {

// One ROI mapped onto the feature map and cut into bins. T is the compute type (float or double).
template <typename T>
struct RoiBins {
  int64_t batch_index;  // which image of the batch the ROI belongs to (rois[k, 0], truncated)
  T start_y;            // top edge of the ROI in feature-map pixels
  T start_x;            // left edge
  T bin_h;              // height of one output bin in feature-map pixels
  T bin_w;              // width of one output bin
  int grid_h;           // samples per bin along y
  int grid_w;           // samples per bin along x
  T count;              // samples per bin, at least 1: the divisor of the average
};

// True when the float rois[k, 0] truncates to an int64 in [0, 2^31): a cast of NaN or of a value
// out of range would be undefined behaviour. Upper bound: no batch holds 2^31 images.
template <typename T>
MASKRCNN_HOST_DEVICE bool valid_batch_number(T value) {
  return value > static_cast<T>(-1) && value < static_cast<T>(2147483648.0);
}

// The adaptive number of samples along one axis of a bin, ceil(size of a bin in pixels). Computed
// in double (exact for float inputs too). NaN and negative sizes give 0 (the reference's
// clamp(min=0)); so does a size beyond int (an infinite box), which would otherwise be cast with
// undefined behaviour, or take forever.
template <typename T>
MASKRCNN_HOST_DEVICE int adaptive_grid(T bin_size) {
  const double samples = ceil(static_cast<double>(bin_size));
  return (samples >= 0.0 && samples <= 2147483647.0) ? static_cast<int>(samples) : 0;
}

// roi points at [batch_index, x1, y1, x2, y2] in input-image pixels.
template <typename T>
MASKRCNN_HOST_DEVICE RoiBins<T> roi_bins(const T* roi, T spatial_scale, int out_h, int out_w,
                                         int sampling_ratio, bool aligned) {
  RoiBins<T> bins;
  bins.batch_index = valid_batch_number(roi[0]) ? static_cast<int64_t>(roi[0]) : -1;
  const T offset = aligned ? static_cast<T>(0.5) : static_cast<T>(0.0);
  bins.start_x = roi[1] * spatial_scale - offset;
  bins.start_y = roi[2] * spatial_scale - offset;
  const T end_x = roi[3] * spatial_scale - offset;
  const T end_y = roi[4] * spatial_scale - offset;
  T roi_w = end_x - bins.start_x;
  T roi_h = end_y - bins.start_y;
  if (!aligned) {  // the legacy (aligned=False) rule: no ROI smaller than one pixel
    // written as std::max(roi_w, 1) is (roi_w < 1 ? 1 : roi_w), so that a NaN size stays NaN
    roi_w = roi_w < static_cast<T>(1) ? static_cast<T>(1) : roi_w;
    roi_h = roi_h < static_cast<T>(1) ? static_cast<T>(1) : roi_h;
  }
  bins.bin_h = roi_h / static_cast<T>(out_h);
  bins.bin_w = roi_w / static_cast<T>(out_w);
  bins.grid_h = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(roi_h / out_h);
  bins.grid_w = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(roi_w / out_w);
  const int64_t grid_points = static_cast<int64_t>(bins.grid_h) * bins.grid_w;
  bins.count = static_cast<T>(grid_points > 1 ? grid_points : 1);
  return bins;
}

// y coordinate of the iy-th sample row of bin row ph (the centre of that sub-grid cell).
template <typename T>
MASKRCNN_HOST_DEVICE T sample_y(const RoiBins<T>& bins, int ph, int iy) {
  return bins.start_y + static_cast<T>(ph) * bins.bin_h +
         static_cast<T>(iy + 0.5f) * bins.bin_h / static_cast<T>(bins.grid_h);
}

// x coordinate of the ix-th sample column of bin column pw.
template <typename T>
MASKRCNN_HOST_DEVICE T sample_x(const RoiBins<T>& bins, int pw, int ix) {
  return bins.start_x + static_cast<T>(pw) * bins.bin_w +
         static_cast<T>(ix + 0.5f) * bins.bin_w / static_cast<T>(bins.grid_w);
}

// The four pixels a bilinear sample reads and their weights. Corners in the order
// (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high); index = y * width + x
// inside one (height, width) plane.
template <typename T>
struct BilinearTaps {
  int64_t index[4];
  T weight[4];
};

// Fills `taps` for the sample at (y, x) of a height x width plane. Returns false for a sample
// outside [-1, H] x [-1, W] or at a NaN coordinate: its weights are 0 and its indices 0 (a harmless
// read). The test is "not inside" rather than "outside" because every comparison with NaN is
// false: written with < and >, a NaN would pass and reach static_cast<int> below.
template <typename T>
MASKRCNN_HOST_DEVICE bool bilinear_taps(T y, T x, int height, int width, BilinearTaps<T>& taps) {
  if (!(y >= static_cast<T>(-1.0) && y <= static_cast<T>(height) && x >= static_cast<T>(-1.0) &&
        x <= static_cast<T>(width))) {
    for (int corner = 0; corner < 4; ++corner) {
      taps.index[corner] = 0;
      taps.weight[corner] = static_cast<T>(0);
    }
    return false;
  }
  if (y <= static_cast<T>(0)) y = static_cast<T>(0);
  if (x <= static_cast<T>(0)) x = static_cast<T>(0);
  int y_low = static_cast<int>(y);
  int x_low = static_cast<int>(x);
  int y_high, x_high;
  if (y_low >= height - 1) {  // on or past the last row: all weight on that row
    y_high = y_low = height - 1;
    y = static_cast<T>(y_low);
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = static_cast<T>(x_low);
  } else {
    x_high = x_low + 1;
  }
  const T ly = y - static_cast<T>(y_low);
  const T lx = x - static_cast<T>(x_low);
  const T hy = static_cast<T>(1) - ly;
  const T hx = static_cast<T>(1) - lx;
  taps.index[0] = static_cast<int64_t>(y_low) * width + x_low;
  taps.index[1] = static_cast<int64_t>(y_low) * width + x_high;
  taps.index[2] = static_cast<int64_t>(y_high) * width + x_low;
  taps.index[3] = static_cast<int64_t>(y_high) * width + x_high;
  taps.weight[0] = hy * hx;
  taps.weight[1] = hy * lx;
  taps.weight[2] = ly * hx;
  taps.weight[3] = ly * lx;
  return true;
}

}  // namespace maskrcnn
