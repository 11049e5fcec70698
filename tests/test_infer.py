"""infer.py end to end: a folder of every image mode plus a corrupt file -> JSON, overlays, crops, COCO files."""
import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from inference_support import CLASS_NAMES, make_checkpoint, mode_images
from maskrcnn.data import FashionDataset, load_records, read_image, segmentation_to_mask
from maskrcnn.inference.cli import main
from maskrcnn.inference.outputs import read_image_json
from maskrcnn.inference.predictor import Predictor
from maskrcnn.tools.check_dataset import check_dataset
from maskrcnn.visualize import draw_instances

# pycocotools' decoder trips NumPy 2's __array__(copy=...) deprecation; harmless and outside our control.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = ["rgb", "gray", "gray16", "rgba", "palette", "cmyk", "exif"]
OPTIONS = ["--score-thresh", "0.2", "--max-detections", "4", "--workers", "0"]


def area(rle) -> int:
    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}))


def run(argv):
    """main(argv) with its stdout and stderr captured: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    checkpoint = make_checkpoint(str(root / "tiny.pth"))
    images = mode_images(str(root / "images"))
    out, dataset = str(root / "out"), str(root / "dataset")
    status, stdout, stderr = run(["--weights", checkpoint, str(root / "images"), "--out", out, "--crops",
                                  "--as-dataset", dataset] + OPTIONS)
    return {"checkpoint": checkpoint, "images": images, "out": out, "dataset": dataset, "status": status,
            "stdout": stdout, "stderr": stderr,
            "predictor": Predictor(checkpoint, device="cpu", score_thresh=0.2, max_detections=4)}  # = OPTIONS


def test_corrupt_file_is_reported_and_the_batch_goes_on(setup):
    assert setup["status"] == 1  # some input unreadable; the others processed
    corrupt = setup["images"]["corrupt"]
    # The line the docs promise, "skipped PATH: reason", with the path said once.
    skipped = [line for line in setup["stderr"].splitlines() if "skipped" in line]
    assert skipped == [f"infer.py: skipped {corrupt}: cannot identify image file (UnidentifiedImageError)"]
    with open(os.path.join(setup["out"], "unreadable.txt")) as f:
        lines = f.read().splitlines()
    assert lines == [f"{corrupt}\tcannot identify image file (UnidentifiedImageError)"]
    assert "7 image(s)" in setup["stdout"] and "1 file(s) could not be read" in setup["stdout"]
    written = sorted(os.listdir(os.path.join(setup["out"], "json")))
    assert written == sorted(os.path.splitext(os.path.basename(setup["images"][k]))[0] + ".json" for k in GOOD)


@pytest.mark.parametrize("case", GOOD)
def test_json_holds_the_predictors_instances_and_rle_decodes_to_the_pasted_masks(setup, case):
    path = setup["images"][case]
    stem = os.path.splitext(os.path.basename(path))[0]
    document, instances = read_image_json(os.path.join(setup["out"], "json", stem + ".json"))
    image = read_image(path)
    height, width = image.shape[1:]
    assert (document["height"], document["width"]) == (height, width)
    assert document["class_names"] == list(CLASS_NAMES) and document["path"] == path
    # The Python API with the same options gives the same instances, number for number.
    predictor = setup["predictor"]
    expected = predictor.predict(path)
    assert len(instances) == len(expected) == 4
    for got, want in zip(instances, expected):
        assert (tuple(got.box), got.label, got.tag, got.score, got.rle) == (want.box, want.label, want.tag, want.score,
                                                                           want.rle)
    # The RLE decodes to the model's pasted masks cut at 0.5 (model run on the decoded image, capped at 4).
    heads = predictor.model.roi_heads
    cap, heads.detections_per_img = heads.detections_per_img, 4
    try:
        with torch.no_grad():
            output = predictor.model([image])[0]
    finally:
        heads.detections_per_img = cap
    assert torch.equal(torch.tensor([i.box for i in instances]), output["boxes"])
    for entry, probabilities in zip(document["instances"], output["masks"]):
        rle = {"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"].encode()}
        decoded = mask_utils.decode(rle)
        assert decoded.shape == (height, width)
        assert np.array_equal(decoded.astype(bool), (probabilities[0] > 0.5).numpy())
        assert entry["area"] == int(decoded.sum())
        assert entry["box"][2] > entry["box"][0] and entry["box"][3] > entry["box"][1]


def test_overlay_is_drawn_from_the_predictions(setup):
    path = setup["images"]["exif"]
    overlay = Image.open(os.path.join(setup["out"], "overlays", "g_exif.png"))
    assert overlay.size[0] == 42 * 9 and overlay.size[1] > 56 * 9  # the displayed (EXIF-rotated) size, enlarged
    # round(512 / 56) = 9 times for readable tags (maskrcnn/overlay_layout.py), with the legend strip under it
    _, instances = read_image_json(os.path.join(setup["out"], "json", "g_exif.json"))
    expected = draw_instances(read_image(path), [i.box for i in instances], [i.label for i in instances],
                              masks=np.stack([i.mask for i in instances]), scores=[i.score for i in instances],
                              class_names=CLASS_NAMES)
    assert np.array_equal(np.asarray(overlay.convert("RGB")), np.asarray(expected))
    assert not np.array_equal(np.asarray(expected), np.asarray(Image.open(path).transpose(Image.ROTATE_270)))


def test_crops_are_the_masked_pixels_on_transparency(setup):
    path = setup["images"]["rgb"]
    _, instances = read_image_json(os.path.join(setup["out"], "json", "a_rgb.json"))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    crops = sorted(name for name in os.listdir(os.path.join(setup["out"], "crops")) if name.startswith("a_rgb_"))
    nonempty = [k for k, i in enumerate(instances) if i.area > 0]
    assert crops == [f"a_rgb_{k:02d}_{instances[k].tag}.png" for k in nonempty]
    for k in nonempty:
        crop = np.asarray(Image.open(os.path.join(setup["out"], "crops", f"a_rgb_{k:02d}_{instances[k].tag}.png")))
        mask = instances[k].mask
        rows, cols = np.where(mask)
        window = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        assert crop.shape == mask[window].shape + (4,)
        assert np.array_equal(crop[:, :, 3] > 0, mask[window])
        assert np.array_equal(crop[:, :, :3], pixels[window])


def test_as_dataset_loads_checks_and_trains(setup):
    dataset = setup["dataset"]
    annotations = os.path.join(dataset, "instances.json")
    records = load_records("coco", annotations, os.path.join(dataset, "images"))
    assert len(records) == len(GOOD)
    report = check_dataset("coco", annotations, os.path.join(dataset, "images"))
    assert report.problems == []
    by_name = {os.path.basename(r["file_name"]): r for r in records}
    for case in GOOD:
        path = setup["images"][case]
        stem = os.path.splitext(os.path.basename(path))[0]
        _, instances = read_image_json(os.path.join(setup["out"], "json", stem + ".json"))
        record = by_name[os.path.basename(path)]
        kept = [i for i in instances if i.area > 0]
        assert len(record["annotations"]) == len(kept)
        for annotation, instance in zip(record["annotations"], kept):
            assert annotation["category_id"] == instance.label
            mask = segmentation_to_mask(annotation["segmentation"], record["height"], record["width"])
            assert np.array_equal(mask.astype(bool), instance.mask)
    loaded = FashionDataset(records, num_classes=len(CLASS_NAMES), strict=True)
    for index in range(len(loaded)):
        image, target = loaded[index]
        assert target["masks"].shape[1:] == image.shape[1:]


def test_coco_results_score_perfectly_against_the_same_predictions_as_ground_truth(setup, tmp_path):
    out, dataset = str(tmp_path / "coco"), str(tmp_path / "dataset")
    status, stdout, _ = run(["--weights", setup["checkpoint"], setup["images"]["rgb"], setup["images"]["corrupt"],
                             setup["images"]["cmyk"], "--out", out, "--json", "coco", "--no-overlays",
                             "--as-dataset", dataset] + OPTIONS)
    assert status == 1 and "COCO results" in stdout
    assert not os.path.exists(os.path.join(out, "json")) and not os.path.exists(os.path.join(out, "overlays"))
    with open(os.path.join(out, "coco_results.json")) as f:
        results = json.load(f)
    assert {r["image_id"] for r in results} == {1, 3}  # positions in the input list; 2 was unreadable
    assert all(r["category_name"] == CLASS_NAMES[r["category_id"] - 1] for r in results)
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(os.path.join(dataset, "instances.json"))
        for iou_type in ("bbox", "segm"):
            # The dataset leaves out instances with empty masks; so does the mask evaluation here.
            chosen = [r for r in results if iou_type == "bbox" or area(r["segmentation"]) > 0]
            evaluation = COCOeval(truth, truth.loadRes(chosen), iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            assert evaluation.stats[0] == pytest.approx(1.0, abs=1e-12), iou_type


def test_class_filter_and_errors(setup, tmp_path):
    out = str(tmp_path / "bags")
    status, _, _ = run(["--weights", setup["checkpoint"], setup["images"]["rgb"], "--out", out, "--class", "bag",
                        "--score-thresh", "0", "--workers", "0", "--no-overlays"])
    assert status == 0
    _, instances = read_image_json(os.path.join(out, "json", "a_rgb.json"))
    assert instances and all(i.tag == "bag" for i in instances)
    status, _, stderr = run(["--weights", str(tmp_path / "nope.pth"), setup["images"]["rgb"], "--out", out])
    assert status == 2 and "weights: no such file" in stderr
    # Unusable weights files: one line naming the file and the reason (the reader shared with train.py).
    jpeg = tmp_path / "photo.pth"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))
    status, _, stderr = run(["--weights", str(jpeg), setup["images"]["rgb"], "--out", out])
    assert status == 2
    assert f"{jpeg}: not a loadable checkpoint (it is a JPEG image, not a file written by torch.save)" in stderr
    status, _, stderr = run(["--weights", setup["checkpoint"], str(tmp_path / "missing"), "--out", out])
    assert status == 2 and "no such file or folder" in stderr
    status, _, stderr = run(["--weights", setup["checkpoint"], setup["images"]["rgb"], "--out", out,
                             "--set", "infer.score_treshold=0.3"])
    assert status == 2 and "infer.score_thresh" in stderr  # the closest valid key is suggested


@pytest.mark.slow
def test_entry_point_runs_as_a_script(setup, tmp_path):
    out = str(tmp_path / "script")
    done = subprocess.run([sys.executable, "infer.py", "--weights", setup["checkpoint"], setup["images"]["gray16"],
                           "--out", out, "--workers", "0"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(os.path.join(out, "json", "c_gray16.json"))
    assert os.path.isfile(os.path.join(out, "overlays", "c_gray16.png"))
