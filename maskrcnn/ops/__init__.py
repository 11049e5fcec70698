"""Box operations, the box coder, NMS and ROIAlign: the numeric building blocks of Mask R-CNN.

The box ops and the coder are pure PyTorch. NMS and ROIAlign each have one public entry point (``nms``,
``roi_align``) that checks its arguments and then runs the native C++/CUDA kernel when the extension is
built and supports the tensor's device, else the pure-PyTorch reference (``nms_reference``,
``roi_align_reference``); ``maskrcnn/ops/_native.py`` makes that choice, ``MASKRCNN_NATIVE=0`` forces the
reference, and ``python -m maskrcnn.doctor`` reports which backend each op uses and why.
"""
from .box_coder import BoxCoder
from .boxes import box_area, box_iou, clip_boxes_to_image, remove_small_boxes
from .nms import batched_nms, nms
from .roi_align import roi_align

__all__ = [
    "BoxCoder",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "nms",
    "remove_small_boxes",
    "roi_align",
]
