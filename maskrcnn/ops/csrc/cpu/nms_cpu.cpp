// Non-maximum suppression on the CPU: greedy, in decreasing score order.
//
// Walk the boxes from the highest score down; keep a box unless an already kept box overlaps it
// with IoU > iou_threshold, and let every kept box suppress the lower-scored boxes it overlaps.
// IoU uses areas without "+1" (width = x2 - x1). Ties in score keep their input order (a stable
// sort), so the result is a pure function of the inputs.
//
// The boxes are first gathered into score order, so the inner loop reads memory sequentially.
// float16 / bfloat16 boxes are compared in float32 (half-precision IoU is too coarse).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../ops.h"

namespace maskrcnn {
namespace {

// boxes: (n, 4) contiguous, already sorted by decreasing score. Writes the positions (into that
// sorted order) of the kept boxes to `kept` and returns how many there are.
template <typename T>
int64_t greedy_nms_sorted(const T* boxes, int64_t n, double iou_threshold, int64_t* kept) {
  std::vector<T> areas(n);
  for (int64_t i = 0; i < n; ++i) {
    const T* b = boxes + i * 4;
    areas[i] = (b[2] - b[0]) * (b[3] - b[1]);
  }
  std::vector<unsigned char> suppressed(n, 0);
  int64_t num_kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (suppressed[i]) continue;
    kept[num_kept++] = i;
    const T* bi = boxes + i * 4;
    for (int64_t j = i + 1; j < n; ++j) {
      if (suppressed[j]) continue;
      const T* bj = boxes + j * 4;
      const T inter_w = std::max(static_cast<T>(0), std::min(bi[2], bj[2]) - std::max(bi[0], bj[0]));
      const T inter_h = std::max(static_cast<T>(0), std::min(bi[3], bj[3]) - std::max(bi[1], bj[1]));
      const T inter = inter_w * inter_h;
      const T iou = inter / (areas[i] + areas[j] - inter);
      if (iou > iou_threshold) suppressed[j] = 1;  // compared in double, as the threshold is
    }
  }
  return num_kept;
}

}  // namespace

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  if (boxes.scalar_type() == at::kHalf || boxes.scalar_type() == at::kBFloat16) {
    return nms_cpu(boxes.to(at::kFloat), scores, iou_threshold);  // scores: only sorted
  }
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();  // (n, 4)
  at::Tensor kept_positions = at::empty({n}, boxes.options().dtype(at::kLong));
  int64_t num_kept = 0;
  AT_DISPATCH_FLOATING_TYPES(sorted_boxes.scalar_type(), "nms_cpu", [&] {
    num_kept = greedy_nms_sorted<scalar_t>(sorted_boxes.const_data_ptr<scalar_t>(), n,
                                           iou_threshold,
                                           kept_positions.mutable_data_ptr<int64_t>());
  });
  // positions in score order -> indices into the caller's boxes
  return order.index_select(0, kept_positions.narrow(0, 0, num_kept));
}

}  // namespace maskrcnn
