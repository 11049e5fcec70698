// ATen glue of the NMS CUDA kernel, and the greedy scan over its bitmask.
//
//   1. sort the boxes by decreasing score (stable, like the CPU kernel) and gather them;
//   2. nms_kernel.cu fills the (n, ceil(n / 64)) suppression bitmask on the GPU;
//   3. the mask is copied to the host and scanned in score order: a box is kept unless a kept
//      box has already suppressed it, and a kept box ORs its row into the "removed" bits;
//   4. the kept positions (in score order) are mapped back to indices into the caller's boxes.
// float16 / bfloat16 boxes are compared in float32, as on the CPU.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>
#include <vector>

#include "../ops.h"
#include "launchers.h"

namespace maskrcnn {

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  if (boxes.scalar_type() == at::kHalf || boxes.scalar_type() == at::kBFloat16) {
    return nms_cuda(boxes.to(at::kFloat), scores, iou_threshold);  // scores: only sorted
  }
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const int64_t col_blocks = (n + cuda::kNmsBlockSize - 1) / cuda::kNmsBlockSize;
  TORCH_CHECK_VALUE(col_blocks <= 65535, "nms: at most ", 65535 * cuda::kNmsBlockSize,
                    " boxes are supported on CUDA, got ", n);

  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();  // (n, 4)
  // (n, col_blocks) 64-bit words; int64 storage, read as uint64 bit patterns
  at::Tensor mask = at::empty({n, col_blocks}, boxes.options().dtype(at::kLong));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(sorted_boxes.scalar_type(), "nms_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_nms_mask(sorted_boxes.const_data_ptr<scalar_t>(), n,
                                         iou_threshold,
                                         reinterpret_cast<uint64_t*>(
                                             mask.mutable_data_ptr<int64_t>()),
                                         stream));
  });

  const at::Tensor mask_host = mask.to(at::kCPU);  // waits for the kernel
  const uint64_t* mask_rows = reinterpret_cast<const uint64_t*>(mask_host.const_data_ptr<int64_t>());
  std::vector<uint64_t> removed(col_blocks, 0);
  at::Tensor kept_positions = at::empty({n}, mask_host.options());
  int64_t* kept = kept_positions.mutable_data_ptr<int64_t>();
  int64_t num_kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t block = i / cuda::kNmsBlockSize;
    const int bit = static_cast<int>(i % cuda::kNmsBlockSize);
    if ((removed[block] >> bit) & 1) continue;
    kept[num_kept++] = i;
    const uint64_t* row = mask_rows + i * col_blocks;
    for (int64_t word = block; word < col_blocks; ++word) removed[word] |= row[word];
  }
  // positions in score order -> indices into the caller's boxes
  return order.index_select(0, kept_positions.narrow(0, 0, num_kept).to(boxes.device()));
}

}  // namespace maskrcnn
