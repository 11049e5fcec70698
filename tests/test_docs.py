"""The docs stay true: their Python snippets run, their links and file references resolve, and the numbers
they quote that a fast computation can reproduce (formulas, shapes, counts, worked examples) are recomputed.

Snippets. Every fenced ``python`` block of README.md and docs/*.md is executed, in a scratch folder that holds
what the snippets name: ``configs/`` (the repository's), an *untrained* checkpoint of the demo config at
``output/synthetic_demo/model_0001000.pth`` and synthetic images at ``datasets/synthetic/val/``. So a snippet
that runs a trained checkpoint is checked for its API, not its detections. A block whose first line holds the
visible marker ``# not executed`` (an excerpt, or one needing data we do not have) is left out, and the marker
must say why.

Numbers. Each check asserts that the doc still quotes the number *and* that the code still computes it.
Measured numbers (AP, timings) are not recomputed; the docs name the command and date they came from.
"""
from __future__ import annotations

import math
import os
import re
from typing import List, Tuple

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(os.path.join("docs", name) for name in os.listdir(os.path.join(REPO, "docs")) if name.endswith(".md"))
DOC_FILES = ["README.md"] + DOCS
NOT_EXECUTED = "# not executed"


def read(path: str) -> str:
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def python_blocks(path: str) -> List[Tuple[int, str]]:
    """``(line number, code)`` of every fenced python block of a Markdown file."""
    blocks, lines, start = [], read(path).split("\n"), None
    for number, line in enumerate(lines, start=1):
        if start is None and line.strip() == "```python":
            start, body = number, []
        elif start is not None and line.strip() == "```":
            blocks.append((start, "\n".join(body)))
            start = None
        elif start is not None:
            body.append(line)
    return blocks


def quoted(text: str, *phrases: str) -> None:
    """The doc still says each phrase (so the recomputed number below is the one it quotes)."""
    flat = " ".join(text.split())
    for phrase in phrases:
        assert " ".join(phrase.split()) in flat, f"the doc no longer quotes {phrase!r}"


# ------------------------------------------------------------------------------------------------- snippets
SNIPPETS = [(path, line, code) for path in DOC_FILES for line, code in python_blocks(path)]
MARKED = [(path, line, code) for path, line, code in SNIPPETS if NOT_EXECUTED in code.strip().split("\n")[0]]
RUN = [snippet for snippet in SNIPPETS if snippet not in MARKED]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A folder with configs/, an untrained demo checkpoint and two synthetic validation images."""
    from maskrcnn.config import load_config
    from maskrcnn.data.synthetic import CLASS_NAMES, generate_synthetic_dataset
    from maskrcnn.engine.checkpoint import save_checkpoint
    from maskrcnn.modeling import build_model

    root = tmp_path_factory.mktemp("docs_sandbox")
    os.symlink(os.path.join(REPO, "configs"), root / "configs")
    generate_synthetic_dataset(str(root / "datasets" / "synthetic"), num_train=0, num_val=2, image_size=128)
    cfg = load_config(os.path.join(REPO, "configs", "synthetic_demo.yaml"))
    torch.manual_seed(0)
    save_checkpoint(str(root / "output" / "synthetic_demo" / "model_0001000.pth"),
                    model=build_model(cfg, load_weights=False), iteration=1000, config=cfg,
                    class_names=CLASS_NAMES)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("path,line,code", RUN, ids=[f"{p}:{n}" for p, n, _ in RUN])
def test_python_snippets_run(path, line, code, sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    exec(compile(code, f"{path}:{line}", "exec"), {"__name__": "__doc_snippet__"})


def test_snippets_left_out_say_why_and_are_few():
    for path, line, code in MARKED:
        reason = code.strip().split("\n")[0].split(NOT_EXECUTED, 1)[1].strip(" :-")
        assert len(reason) > 10, f"{path}:{line}: the '{NOT_EXECUTED}' marker must say why"
    assert len(RUN) >= 4 and len(MARKED) <= len(RUN), [(p, n) for p, n, _ in MARKED]


# ----------------------------------------------------------------------------------- links and file names
LINK = re.compile(r"\]\(([^)\s]+)\)")
FILE_NAME = re.compile(r"`((?:maskrcnn|tests|configs|bench|docs|data|scripts)/[\w./-]+|(?:train|infer|setup)\.py)`")


@pytest.mark.parametrize("path", DOC_FILES)
def test_relative_links_resolve(path):
    folder = os.path.dirname(os.path.join(REPO, path))
    broken = []
    for target in LINK.findall(read(path)):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor on the same page
        if not os.path.exists(os.path.normpath(os.path.join(folder, target.split("#")[0]))):
            broken.append(target)
    assert not broken, f"{path}: links to missing files {broken}"


@pytest.mark.parametrize("path", DOC_FILES)
def test_file_names_in_backquotes_exist(path):
    missing = [name for name in FILE_NAME.findall(read(path))
               if not os.path.exists(os.path.join(REPO, name.rstrip("/")))]
    assert not missing, f"{path}: names files that are not in the repository {missing}"


def test_no_doc_or_docstring_points_outside_the_repository():
    texts = [(p, read(p)) for p in DOC_FILES]
    for folder, _, files in os.walk(os.path.join(REPO, "maskrcnn")):
        texts += [(os.path.join(folder, f), open(os.path.join(folder, f), encoding="utf-8").read())
                  for f in files if f.endswith(".py")]
    offenders = [p for p, text in texts if re.search(r"DESIGN\.md|FACTS\.md|\.\./shared", text)]
    assert not offenders, offenders


# ----------------------------------------------------------------------------- numbers the docs quote
def test_architecture_worked_examples():
    from maskrcnn.ops import BoxCoder, box_iou, nms

    text = read("docs/architecture.md")
    quoted(text, "their IoU is 0.25", "an IoU of 0.25 / 1.75")
    iou = box_iou(torch.tensor([[0.0, 0, 100, 100], [0, 0, 1, 1]]), torch.tensor([[0.0, 0, 50, 50], [.5, .5, 1.5, 1.5]]))
    assert iou[0, 0].item() == 0.25 and iou[1, 1].item() == pytest.approx(0.25 / 1.75, rel=1e-6)

    quoted(text, "`dy = 10 * 0.05 / 1.7 = 0.29412`", "`dw = 5 log(2 / 2.4) = -0.91161`", "`dh = 5 log(2 / 1.7) = 0.81259`")
    deltas = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(torch.tensor([[1.0, 1, 3, 3]]), torch.tensor([[0.8, 1.1, 3.2, 2.8]]))
    assert [round(v, 5) for v in deltas[0].tolist()] == [0.0, 0.29412, -0.91161, 0.81259]
    quoted(text, "grows a box at most 62.5 times")
    assert math.exp(math.log(1000 / 16)) == pytest.approx(62.5)

    quoted(text, "At threshold 0.5 the result is `[3, 1]`; at 0.8 boxes 4 and 2 survive too (`[3, 4, 1, 2]`); at 0.9 all five.")
    boxes = torch.tensor([[10.0, 10, 50, 60], [11, 12, 48, 60], [8, 9, 40, 50], [100, 100, 150, 140], [99, 110, 155, 139]])
    scores = torch.tensor([0.5, 0.7, 0.6, 0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [3, 1] and nms(boxes, scores, 0.8).tolist() == [3, 4, 1, 2]
    assert len(nms(boxes, scores, 0.9)) == 5


def test_architecture_roi_align_table_and_means():
    from maskrcnn.ops import roi_align

    text = read("docs/architecture.md")
    quoted(text, "7.5   8.0   8.5   9.0              4.5   5.0   5.5   6.0",
           "15.0  15.5  16.0  16.5             12.0  12.5  13.0  13.5",
           "the aligned output averages to 9 (a 1x1 ROIAlign gives exactly 9), the unaligned one to 12")
    feature = torch.arange(25, dtype=torch.float64).reshape(1, 1, 5, 5)
    rois = torch.tensor([[0, 1.0, 1, 3, 3]], dtype=torch.float64)
    unaligned = roi_align(feature, rois, (4, 4), 1.0, 0, False)[0, 0]
    aligned = roi_align(feature, rois, (4, 4), 1.0, 0, True)[0, 0]
    assert unaligned[0].tolist() == [7.5, 8, 8.5, 9] and unaligned[3].tolist() == [15, 15.5, 16, 16.5]
    assert aligned[0].tolist() == [4.5, 5, 5.5, 6] and aligned[3].tolist() == [12, 12.5, 13, 13.5]
    assert aligned.mean().item() == 9 and unaligned.mean().item() == 12
    assert roi_align(feature, rois, (1, 1), 1.0, 0, True).item() == 9


def test_architecture_shapes_and_counts():
    from maskrcnn.modeling.anchors import AnchorGenerator

    text = read("docs/architecture.md")
    quoted(text, "(23,025 for the 288x320 batch)", "fc1 (12544 -> 1024)")
    generator = AnchorGenerator(sizes=[(s,) for s in (32, 64, 128, 256, 512)], aspect_ratios=(0.5, 1.0, 2.0))
    feature_sizes = [(288 // s, 320 // s) for s in (4, 8, 16, 32)] + [(5, 5)]  # P6 = P5 (9x10) max-pooled by 2
    anchors = generator(image_size=(288, 320), feature_sizes=feature_sizes)
    assert anchors.shape == (23025, 4) and 256 * 7 * 7 == 12544


@pytest.mark.slow
def test_parameter_counts_quoted_in_the_docs():
    from maskrcnn.config import load_config
    from maskrcnn.modeling import build_model

    quoted(read("docs/architecture.md"), "44.0 M parameters with 13 classes (44,401,393 with COCO's 90")
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(build_model(load_config(overrides=["model.num_classes=90"]))) == 44_401_393
    assert round(count(build_model(load_config())) / 1e6, 1) == 44.0
    quoted(read("docs/training.md"), "slim heads (12.4 M parameters)")
    demo = build_model(load_config(os.path.join(REPO, "configs", "synthetic_demo.yaml")), load_weights=False)
    assert round(count(demo) / 1e6, 1) == 12.4


def test_design_choices_numbers():
    from maskrcnn.modeling.anchors import AnchorGenerator
    from maskrcnn.modeling.poolers import assign_fpn_levels

    text = read("docs/design_choices.md")
    # anchors per level for an 800x1216 input: P2..P5 at strides 4..32, P6 = P5 max-pooled by 2
    quoted(text, "P2 holds 182,400 anchors, P3 45,600, P4 11,400, P5 2,850 and P6 741 (242,991 in all, 75 % of them on P2)",
           "(here at most 4,741 candidates: 1000 from each of P2-P5 and all 741 of P6)")
    sizes = [(800 // s, 1216 // s) for s in (4, 8, 16, 32)]
    sizes.append(((sizes[-1][0] - 1) // 2 + 1, (sizes[-1][1] - 1) // 2 + 1))  # kernel 1, stride 2
    generator = AnchorGenerator(sizes=[(s,) for s in (32, 64, 128, 256, 512)], aspect_ratios=(0.5, 1.0, 2.0))
    per_level = [len(a) for a in generator.anchors_per_level(image_size=(800, 1216), feature_sizes=sizes)]
    assert per_level == [182400, 45600, 11400, 2850, 741] and sum(per_level) == 242991
    assert round(100 * per_level[0] / sum(per_level)) == 75 and sum(min(1000, n) for n in per_level) == 4741

    quoted(text, "at most 128 foreground ROIs per image", "At 25 % positives the per-positive mean would be 4 times larger")
    assert int(512 * 0.25) == 128 and 512 / 128 == 4

    quoted(text, "So 224 -> P4, 112 -> P3, 56 -> P2, 448 -> P5", "(32 -> floor(1.19) = 1, clamped to 2)")
    squares = torch.tensor([[0.0, 0.0, s, s] for s in (224, 112, 56, 448, 32)])
    assert assign_fpn_levels(squares).tolist() == [4, 3, 2, 5, 2]
    assert math.floor(4 + math.log2(32 / 224)) == 1 and round(4 + math.log2(32 / 224), 2) == 1.19

    quoted(text, "1024 x 56 + 56 = 57,400 parameters against 4,100", "(256 x 14 + 14 = 3,598")
    from maskrcnn.modeling.box_head import BoxPredictor
    from maskrcnn.modeling.mask_head import MaskHead

    predictor = BoxPredictor(1024, 13)
    assert sum(p.numel() for p in predictor.box_deltas.parameters()) == 57400 == 1024 * 56 + 56
    assert 1024 * 4 + 4 == 4100
    assert sum(p.numel() for p in MaskHead(256, 13).logits.parameters()) == 3598


def test_tuning_numbers():
    from maskrcnn.modeling.anchors import make_cell_anchors
    from maskrcnn.data.samplers import class_repeat_factors

    text = read("docs/tuning.md")
    quoted(text, "`h = 128 * sqrt(4) = 256` by `w = 128 / sqrt(4) = 64` pixels, the cell anchor `[-32, -128, 32, 128]`")
    assert make_cell_anchors([128], [4.0])[0].tolist() == [-32, -128, 32, 128]
    quoted(text, "1024/800 = 1.28", "(1024 / 800)^2 = 1.64 times", "(600/800)^2 = 0.56")
    assert 1024 / 800 == 1.28 and round((1024 / 800) ** 2, 2) == 1.64 and round((600 / 800) ** 2, 2) == 0.56
    quoted(text, "a class in 2 % of the images gets `sqrt(0.2 / 0.02) = 3.16`, a class in 5 % gets 2")
    factors = class_repeat_factors(torch.tensor([0.02, 0.05, 0.2, 0.5]).double().numpy(), 0.2)
    assert [round(v, 2) for v in factors.tolist()] == [3.16, 2.0, 1.0, 1.0]
    quoted(text, "print(factors[0], round(float(factors[-1]), 2), round(float(factors.sum()), 2))   # 1.0 3.16 52.16")
    records = [{"annotations": [{"category_id": 1}]}] * 49 + [{"annotations": [{"category_id": 2}]}]
    from maskrcnn.data.samplers import repeat_factors

    factors = repeat_factors(records, num_classes=2, threshold=0.2)
    assert (factors[0], round(float(factors[-1]), 2), round(float(factors.sum()), 2)) == (1.0, 3.16, 52.16)
    quoted(text, "`model.roi_heads.score_thresh` = 0.05", "`infer.score_thresh` = 0.5")
    from maskrcnn.defaults import DEFAULTS

    assert DEFAULTS["model"]["roi_heads"]["score_thresh"].default == 0.05
    assert DEFAULTS["infer"]["score_thresh"].default == 0.5
    quoted(text, "(a 1:2 photo at 800 would need 1600)")


def test_conventions_literals_match_the_code():
    from maskrcnn.data.imaterialist import rle_decode, rle_encode

    text = read("docs/conventions.md")
    quoted(text, '`"1 2 5 1"` decodes to `[[1,0,0,0],[1,1,0,0],[0,0,0,0]]`',
           '`[[0,1,1,0],[0,1,1,0],[0,0,0,0]]` encodes to `"4 2 7 2"`')
    assert rle_decode("1 2 5 1", 3, 4).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert rle_encode([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]) == "4 2 7 2"
