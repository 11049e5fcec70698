"""nms and batched_nms against torchvision's kept indices and docs/conventions.md."""
import pytest
import torch

from maskrcnn.ops import batched_nms, box_iou, nms


def _threshold(nms_ref, k):
    # Stored as float32 (0.3 -> 0.30000001192...); torchvision was called with the Python float 0.3.
    return round(nms_ref[f"case{k}_iou_threshold"].item(), 4)


@pytest.mark.parametrize("k", range(4))
def test_nms_matches_torchvision(nms_ref, k):
    keep = nms(nms_ref[f"case{k}_boxes"], nms_ref[f"case{k}_scores"], _threshold(nms_ref, k))
    assert keep.dtype == torch.int64
    assert torch.equal(keep, nms_ref[f"case{k}_keep"])


@pytest.mark.parametrize("k", range(4))
def test_batched_nms_matches_torchvision(nms_ref, k):
    boxes, scores, idxs = (nms_ref[f"case{k}_{name}"] for name in ("boxes", "scores", "idxs"))
    keep = batched_nms(boxes, scores, idxs, _threshold(nms_ref, k))
    assert torch.equal(keep, nms_ref[f"case{k}_batched_keep"])


def test_duplicates_and_nothing(nms_ref):
    assert torch.equal(nms(nms_ref["dup_boxes"], nms_ref["dup_scores"], 0.5), nms_ref["dup_keep"])
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and torch.equal(empty, nms_ref["empty_keep"])
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)


@pytest.mark.parametrize(
    "threshold, kept", [(0.1, [1, 3]), (0.3, [1, 3]), (0.5, [1, 3]), (0.8, [1, 2, 3, 4]), (0.9, [0, 1, 2, 3, 4])]
)
def test_nms_literals(threshold, kept):
    boxes = torch.tensor(
        [[10, 10, 50, 60], [11, 12, 48, 60], [8, 9, 40, 50], [100, 100, 150, 140], [99, 110, 155, 139]],
        dtype=torch.float32,
    )
    scores = torch.tensor([0.5, 0.7, 0.6, 0.9, 0.8])
    iou = box_iou(boxes, boxes)  # the overlaps quoted in docs/architecture.md
    assert [round(iou[i, j].item(), 3) for i, j in ((3, 4), (1, 0), (1, 2))] == [0.667, 0.888, 0.555]
    keep = nms(boxes, scores, threshold)
    assert sorted(keep.tolist()) == kept
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])  # decreasing score order


def test_suppression_is_strictly_greater_than_threshold():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 1.0], [0.0, 0.0, 2.0, 1.0]])  # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    assert box_iou(boxes[:1], boxes[1:]).item() == 0.5
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]


def test_equal_scores_keep_the_lower_index():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.5, 0.7, 0.7, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 3]


def test_zero_area_boxes_never_suppress():
    # 0 / 0 IoU between two identical zero-area boxes: torchvision's kernel compares NaN > t (false)
    boxes = torch.tensor([[5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2]


def test_batched_nms_is_nms_per_class():
    torch.manual_seed(0)
    xy = torch.rand(200, 2) * 100
    boxes = torch.cat([xy, xy + torch.rand(200, 2) * 40 + 1], dim=1)
    scores = torch.rand(200)
    idxs = torch.randint(0, 4, (200,))
    idxs[idxs == 2] = 7  # ids need not be contiguous; class 2 is absent
    keep = batched_nms(boxes, scores, idxs, 0.5)
    expected = []
    for c in idxs.unique():
        members = torch.where(idxs == c)[0]
        expected += members[nms(boxes[members], scores[members], 0.5)].tolist()
    assert sorted(keep.tolist()) == sorted(expected)
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])


def test_batched_nms_never_mixes_classes_even_in_half_precision():
    # identical boxes of different classes both survive; large coordinates and class ids in float16
    # would overflow a coordinate-offset trick computed in half precision
    boxes = torch.tensor([[30000.0, 30000.0, 60000.0, 60000.0]] * 4, dtype=torch.float16)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float16)
    idxs = torch.tensor([900, 901, 900, 902])
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 1, 3]


def test_nms_argument_errors():
    with pytest.raises(ValueError, match=r"boxes and scores must have the same length.*\(5, 4\).*\(4,\)"):
        nms(torch.zeros(5, 4), torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\).*\(5, 5\)"):
        nms(torch.zeros(5, 5), torch.zeros(5), 0.5)
    with pytest.raises(ValueError, match=r"scores must have shape \(N,\).*\(5, 1\)"):
        nms(torch.zeros(5, 4), torch.zeros(5, 1), 0.5)
    with pytest.raises(ValueError, match=r"idxs must have the shape of scores"):
        batched_nms(torch.zeros(5, 4), torch.zeros(5), torch.zeros(3, dtype=torch.int64), 0.5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nms_on_cuda_matches_cpu(nms_ref):
    for k in range(4):
        boxes, scores, idxs = (nms_ref[f"case{k}_{name}"] for name in ("boxes", "scores", "idxs"))
        t = _threshold(nms_ref, k)
        keep = nms(boxes.cuda(), scores.cuda(), t)
        assert keep.device.type == "cuda"
        assert torch.equal(keep.cpu(), nms_ref[f"case{k}_keep"])
        assert torch.equal(batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), t).cpu(), nms_ref[f"case{k}_batched_keep"])
