"""Query options and uploads: checked and decoded, every problem a RequestError naming it."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.inference.images import decode_image
from maskrcnn.serve.requests import PredictOptions, RequestError, UploadLimits, decode_upload, parse_options

CLASSES = ["shirt, blouse", "dress", "bag"]
DEFAULTS = PredictOptions(0.5, 100, ())


class Query(dict):
    """A multi-dict like Starlette's ``query_params``: ``{key: [values]}``; ``get`` gives the last value."""

    def get(self, key, default=None):
        values = dict.get(self, key)
        return values[-1] if values else default

    def getlist(self, key):
        return list(dict.get(self, key, []))


def test_options_default_and_parse():
    assert parse_options(Query(), CLASSES, DEFAULTS) == DEFAULTS
    options = parse_options(Query(score_thresh=["0.25"], max_detections=["7"], **{"class": ["shirt, blouse", "bag"]},
                                  format=["png"]), CLASSES, DEFAULTS)
    assert options == PredictOptions(0.25, 7, ("shirt, blouse", "bag"), "png")  # a comma stays in its name


@pytest.mark.parametrize("query, status, words", [
    ({"score_thresh": ["1.5"]}, 422, "score_thresh=1.5 is outside [0, 1]"),
    ({"score_thresh": ["nan"]}, 422, "'nan' is not a finite number"),
    ({"score_thresh": ["high"]}, 422, "score_thresh='high' is not a number"),
    ({"max_detections": ["0"]}, 422, "max_detections=0 must be at least 1"),
    ({"max_detections": ["2.5"]}, 422, "'2.5' is not an integer"),
    ({"class": ["dress", "hat"]}, 422, "unknown class name(s) ['hat']; the model's classes are"),
    ({"format": ["jpeg"]}, 422, "format='jpeg' is not one of ['json', 'png']"),
    ({"limit": ["3"]}, 422, "unknown query parameter(s) ['limit']"),
])
def test_bad_options_name_the_problem(query, status, words):
    with pytest.raises(RequestError) as caught:
        parse_options(Query(query), CLASSES, DEFAULTS)
    assert caught.value.status == status and words in caught.value.message


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_decodes_as_the_file_decodes(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (9, 13, 4), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    decoded = decode_upload(path.read_bytes(), "upload 'a.png'", UploadLimits())
    reference = decode_image(str(path))
    assert torch.equal(decoded.image, reference.image) and (decoded.height, decoded.width) == (9, 13)


def test_upload_limits():
    picture = png_bytes(Image.new("RGB", (400, 300), (10, 20, 30)))
    with pytest.raises(RequestError) as caught:
        decode_upload(picture, "upload 'big.png'", UploadLimits(max_image_pixels=100_000))
    assert caught.value.status == 413
    assert caught.value.message.startswith("upload 'big.png': 400x300 = 120000 pixels is more than the limit of 100000")
    assert "--max-image-pixels" in caught.value.message
    with pytest.raises(RequestError) as caught:
        decode_upload(picture, "upload 'big.png'", UploadLimits(max_upload_bytes=100))
    assert caught.value.status == 413 and f"({len(picture)} bytes)" in caught.value.message
    shrunk = decode_upload(picture, "x", UploadLimits(max_decoded_side=100))  # 400 -> factor 4
    assert (shrunk.reduction, tuple(shrunk.image.shape), shrunk.width) == (4, (3, 75, 100), 400)


@pytest.mark.parametrize("data, words", [
    (b"", "no image"),
    (b"GIF89a and then nothing", "the request body is not a readable image"),
    (png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:-40], "the request body is not a readable image"),
])
def test_unreadable_uploads_are_400(data, words):
    with pytest.raises(RequestError) as caught:
        decode_upload(data, "the request body", UploadLimits())
    assert caught.value.status == 400 and words in caught.value.message
