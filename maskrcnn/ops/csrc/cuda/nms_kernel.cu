// NMS on the GPU, the bitmask scheme: the O(n^2) IoU tests run in parallel, the short greedy
// scan that follows runs on the host (nms_cuda.cpp).
//
// The boxes arrive sorted by decreasing score and are cut into blocks of 64. Thread block
// (col_block, row_block) loads the 64 boxes of col_block into shared memory; its thread t tests
// box i = 64 * row_block + t against each of them and writes one 64-bit word whose bit b says
// "box i overlaps box 64 * col_block + b by IoU > threshold, and that box has a lower score".
// Blocks below the diagonal (col_block < row_block) hold only higher-scored boxes and exit.
#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"

namespace maskrcnn {
namespace cuda {
namespace {

// Products rounded on their own: nvcc would otherwise fuse a product and the sum it feeds into
// one multiply-add, and an IoU one rounding away from the CPU kernel's could flip a decision.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// IoU of two [x1, y1, x2, y2] boxes, areas without "+1"; the same operations as the CPU kernel.
template <typename T>
__device__ __forceinline__ T box_iou(const T* a, const T* b) {
  const T inter_w = max(T(0), min(a[2], b[2]) - max(a[0], b[0]));
  const T inter_h = max(T(0), min(a[3], b[3]) - max(a[1], b[1]));
  const T inter = mul_rn(inter_w, inter_h);
  const T area_a = mul_rn(a[2] - a[0], a[3] - a[1]);
  const T area_b = mul_rn(b[2] - b[0], b[3] - b[1]);
  return inter / (area_a + area_b - inter);
}

template <typename T>
__global__ void nms_mask_kernel(const T* boxes, int64_t n, int64_t col_blocks,
                                double iou_threshold, uint64_t* mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int row_size = static_cast<int>(min(n - row_block * kNmsBlockSize, int64_t(kNmsBlockSize)));
  const int col_size = static_cast<int>(min(n - col_block * kNmsBlockSize, int64_t(kNmsBlockSize)));

  __shared__ T col_boxes[kNmsBlockSize * 4];
  if (threadIdx.x < col_size) {
    for (int k = 0; k < 4; ++k) {
      col_boxes[threadIdx.x * 4 + k] = boxes[(col_block * kNmsBlockSize + threadIdx.x) * 4 + k];
    }
  }
  __syncthreads();

  if (threadIdx.x < row_size) {
    const int64_t row = row_block * kNmsBlockSize + threadIdx.x;
    const T* row_box = boxes + row * 4;
    // on the diagonal, only the boxes after this one in score order
    const int start = (row_block == col_block) ? static_cast<int>(threadIdx.x) + 1 : 0;
    uint64_t bits = 0;
    for (int b = start; b < col_size; ++b) {
      if (static_cast<double>(box_iou(row_box, col_boxes + b * 4)) > iou_threshold) {
        bits |= uint64_t(1) << b;
      }
    }
    mask[row * col_blocks + col_block] = bits;
  }
}

}  // namespace

template <typename T>
cudaError_t launch_nms_mask(const T* sorted_boxes, int64_t n, double iou_threshold,
                            uint64_t* mask, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int64_t col_blocks = (n + kNmsBlockSize - 1) / kNmsBlockSize;
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
  nms_mask_kernel<T><<<grid, kNmsBlockSize, 0, stream>>>(sorted_boxes, n, col_blocks,
                                                         iou_threshold, mask);
  return cudaGetLastError();
}

template cudaError_t launch_nms_mask<float>(const float*, int64_t, double, uint64_t*, cudaStream_t);
template cudaError_t launch_nms_mask<double>(const double*, int64_t, double, uint64_t*,
                                             cudaStream_t);

}  // namespace cuda
}  // namespace maskrcnn
