"""maskrcnn: a from-scratch, pure-PyTorch Mask R-CNN for fashion instance segmentation."""

__version__ = "0.1.0"
