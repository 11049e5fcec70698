// Non-maximum suppression on the CPU: greedy, in decreasing score order.
//
// Walk the boxes from the highest score down; keep a box unless an already kept box overlaps it
// with IoU > iou_threshold, and let every kept box suppress the lower-scored boxes it overlaps.
// IoU uses areas without "+1" (width = x2 - x1). Ties in score keep their input order (a stable
// sort), so the result is a pure function of the inputs.
//
// The boxes are first gathered into score order, one array per coordinate, so that the inner
// loop reads memory sequentially and the compiler vectorizes it.
// float16 / bfloat16 boxes are compared in float32 (half-precision IoU is too coarse).
// Serial: whether box j survives depends on every earlier keep decision, so the scan is
// sequential (the sort and gather before it are ATen ops, parallel on their own).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../ops.h"

namespace maskrcnn {
namespace {

// The largest T not above `threshold`: for every T value x (NaN included), x > threshold, compared
// in double, equals x > round_down(threshold), compared in T: the inner loop stays in T.
template <typename T>
T round_down(double threshold) {
  T t = static_cast<T>(threshold);
  if (static_cast<double>(t) > threshold) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}

// boxes: (n, 4) contiguous, already sorted by decreasing score. Writes the positions (into that
// sorted order) of the kept boxes to `kept` and returns how many there are.
template <typename T>
int64_t greedy_nms_sorted(const T* boxes, int64_t n, double iou_threshold, int64_t* kept) {
  // one array per coordinate, so that the inner loop reads each with unit stride and vectorizes
  std::vector<T> x1(n), y1(n), x2(n), y2(n), areas(n);
  for (int64_t i = 0; i < n; ++i) {
    x1[i] = boxes[i * 4];
    y1[i] = boxes[i * 4 + 1];
    x2[i] = boxes[i * 4 + 2];
    y2[i] = boxes[i * 4 + 3];
    areas[i] = (x2[i] - x1[i]) * (y2[i] - y1[i]);
  }
  const T threshold = round_down<T>(iou_threshold);
  std::vector<unsigned char> suppressed(n, 0);
  int64_t num_kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (suppressed[i]) continue;
    kept[num_kept++] = i;
    // Box i suppresses every later box it overlaps too much. Testing the already suppressed ones
    // again changes nothing and keeps the loop branch-free.
    const T bx1 = x1[i], by1 = y1[i], bx2 = x2[i], by2 = y2[i], area = areas[i];
    for (int64_t j = i + 1; j < n; ++j) {
      const T inter_w = std::max(T(0), std::min(bx2, x2[j]) - std::max(bx1, x1[j]));
      const T inter_h = std::max(T(0), std::min(by2, y2[j]) - std::max(by1, y1[j]));
      const T inter = inter_w * inter_h;
      const T iou = inter / (area + areas[j] - inter);  // 0 / 0 = NaN: never suppresses
      suppressed[j] |= static_cast<unsigned char>(iou > threshold);
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
