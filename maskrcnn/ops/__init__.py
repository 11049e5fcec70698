"""Box operations, the box coder, NMS and ROIAlign: the numeric building blocks of Mask R-CNN.

Every op is pure PyTorch. NMS and ROIAlign each have one public entry point (``nms``, ``roi_align``)
that checks its arguments and calls an implementation (``nms_reference``, ``roi_align_reference``), so
that native kernels can be slotted in behind the same entry point.
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
