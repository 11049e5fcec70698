"""The Mask R-CNN model: ``build_model(cfg)`` assembles it from the config (see ``build.py``)."""
from maskrcnn.modeling.build import build_model

__all__ = ["build_model"]
