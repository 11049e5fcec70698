"""The model side of the server: a batch of decoded uploads, each with its own filters, through one Predictor.

    runner = ModelRunner(predictor)
    instances = runner([(decoded_a, options_a), (decoded_b, options_b)])   # [[Instance, ...], [...]]

This is the ``run_batch`` of :class:`maskrcnn.serve.batching.BatchingQueue`: it is only ever called from the
queue's single worker thread, so it may set the predictor's filters for a group of jobs and run them.

Jobs with the same filters (score threshold, classes, max detections) run as one forward pass through
:meth:`maskrcnn.inference.predictor.Predictor.predict_decoded`, the code path of ``infer.py`` and
``Predictor.predict``, so a request's items are the ones ``infer.py`` writes for the same image and options.
Jobs with other filters run as their own pass: the predictor applies the class filter and the
``max_detections`` cut *before* the mask head (``predictor.py``, step 2), so one shared pass with the
loosest filters would not give each request its items.

Batch-mates are padded to a common size, which changes the anchors the RPN ranks (``infer.batch_size``'s
comment in ``maskrcnn/defaults.py``): an image's items can then differ slightly from the ones it gets
alone. ``--max-batch 1`` keeps every request independent of the others.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from maskrcnn.inference.images import DecodedImage
from maskrcnn.inference.predictor import Instance, Predictor
from maskrcnn.serve.requests import PredictOptions


class ModelRunner:
    """Runs batches of ``(DecodedImage, PredictOptions)`` on one :class:`Predictor` (module docstring)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def __call__(self, jobs: Sequence[Tuple[DecodedImage, PredictOptions]]) -> List[List[Instance]]:
        groups: Dict[Tuple, List[int]] = {}  # filters -> positions of the jobs that use them
        for position, (_decoded, options) in enumerate(jobs):
            key = (options.score_thresh, options.max_detections, options.classes)
            groups.setdefault(key, []).append(position)
        results: List[List[Instance]] = [[] for _ in jobs]
        for (score_thresh, max_detections, classes), positions in groups.items():
            self._set_filters(score_thresh, max_detections, classes)
            found = self.predictor.predict_decoded([jobs[p][0] for p in positions])
            for position, instances in zip(positions, found):
                results[position] = instances
        return results

    def _set_filters(self, score_thresh: float, max_detections: int, classes: Tuple[str, ...]) -> None:
        """The predictor's three filters (``Predictor.__init__`` sets them from ``infer.*``)."""
        predictor = self.predictor
        predictor.score_thresh = float(score_thresh)
        predictor.max_detections = int(max_detections)
        predictor.kept_labels = [predictor.class_names.index(name) + 1 for name in classes] or None
