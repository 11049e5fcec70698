"""maskrcnn: a from-scratch, pure-PyTorch Mask R-CNN for fashion instance segmentation.

``maskrcnn.Predictor`` (see ``maskrcnn/inference/predictor.py``) is imported on first use, so that
``import maskrcnn`` stays light (no torch import until a model is needed).
"""

__version__ = "0.1.0"

__all__ = ["Predictor"]


def __getattr__(name):
    if name == "Predictor":
        from maskrcnn.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'maskrcnn' has no attribute {name!r}")
