"""Inference: a checkpoint and images in; tagged instances, JSON, overlays, crops or a COCO dataset out.

    from maskrcnn.inference import Predictor          # also `from maskrcnn import Predictor`
    instances = Predictor("model.pth").predict("look.jpg")

Modules, in the order data flows through them:

- ``images.py``        which files (files, folders, globs) and how each is decoded (EXIF, every Pillow mode,
                       the decompression-bomb limit, huge images shrunk by an integer factor);
- ``predictor.py``     ``Predictor``: checkpoint loading, the model's forward with inference filters, masks
                       pasted into the original image and encoded as COCO RLE (``Instance``);
- ``outputs.py``       per-image JSON, the COCO results file, overlay pictures, RGBA crops;
- ``auto_annotate.py`` ``--as-dataset``: the predictions as a COCO instance dataset;
- ``cli.py``           the ``infer.py`` command line.
"""
__all__ = ["FileResult", "Instance", "Predictor"]


def __getattr__(name):
    # Imported on first use, so that `infer.py --help` (which imports cli.py) answers without loading torch.
    if name in __all__:
        from maskrcnn.inference import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'maskrcnn.inference' has no attribute {name!r}")
