"""The HTTP API: a FastAPI app around one Predictor, its batching queue and the page.

    app = create_app(predictor, ServeSettings(max_batch=4, max_queue=32, timeout_s=30))
    uvicorn.run(app, host="127.0.0.1", port=8000)          # what `python -m maskrcnn.serve` does

Endpoints (``docs/serving.md`` has curl examples):

    GET  /          the page (maskrcnn/serve/static/index.html)
    GET  /healthz   {"status": "ok", "model_loaded", "device", "class_names", "defaults", "limits", "queue"}
    POST /predict   an image as the multipart field ``image`` or as the raw body; query options in
                    ``requests.py``. Answers ``{"width", "height", "items": [...]}`` (``format=json``) or the
                    overlay PNG (``format=png``).

Each item is ``Instance.to_dict()`` (``maskrcnn/inference/predictor.py``), the function that writes the
items of ``infer.py``'s per-image JSON: ``{"box": [x1, y1, x2, y2], "tag", "category_id", "score", "area",
"segmentation": COCO RLE {"size": [h, w], "counts"}}``, in original pixels, best score first. The PNG is
``maskrcnn.inference.outputs.draw_overlay``, the picture ``infer.py`` writes to ``overlays/``.

How a request goes: options checked (422) -> declared size checked (413) -> admitted by the queue (503 when
``max_queue`` requests are in) -> body read (413 past the limit, 408 when it does not arrive in time) ->
decoded on a worker thread (400 not an image / truncated, 413 decompression bomb) -> queued for the model,
batched with whatever else waits (504 past the time limit) -> answer. Every refusal is ``{"error":
sentence}`` with its status; the server goes on serving.
"""
from __future__ import annotations

import asyncio
import io
import os
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from maskrcnn.inference.images import DecodedImage
from maskrcnn.inference.outputs import draw_overlay
from maskrcnn.inference.predictor import FileResult, Instance, Predictor
from maskrcnn.serve.batching import BatchingQueue, QueueFullError
from maskrcnn.serve.requests import (PredictOptions, RequestError, UploadLimits, decode_upload, parse_options,
                                     too_large_message)
from maskrcnn.serve.runner import ModelRunner

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "index.html")
MULTIPART_ALLOWANCE = 64 * 1024  # boundaries and part headers around the file in a multipart body


@dataclass
class ServeSettings:
    """The server's knobs (``python -m maskrcnn.serve --help`` names the options)."""

    max_batch: int = 4  # most requests per forward pass
    max_queue: int = 32  # most requests in at once (decoding, waiting, running); more get 503
    timeout_s: float = 30.0  # per request, from admission to answer; 408 / 504 past it
    overlay_max_side: int = 2048  # format=png pictures of larger images are scaled down to this side
    limits: UploadLimits = field(default_factory=UploadLimits)


def error_response(status: int, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def prediction_json(decoded: DecodedImage, instances: List[Instance]) -> dict:
    """The ``/predict`` document: the original size and the items (module docstring)."""
    return {"width": decoded.width, "height": decoded.height, "items": [item.to_dict() for item in instances]}


def overlay_png(decoded: DecodedImage, instances: List[Instance], class_names, max_side: int) -> bytes:
    """The overlay picture of ``infer.py`` (``outputs.draw_overlay``) as PNG bytes."""
    result = FileResult("upload", "upload", decoded.height, decoded.width, instances, None, decoded.image,
                        decoded.reduction)
    buffer = io.BytesIO()
    draw_overlay(result, class_names, max_side).save(buffer, format="PNG")
    return buffer.getvalue()


async def read_body(request: Request, limits: UploadLimits) -> bytes:
    """The request body, refused (413) as soon as more than :func:`body_cap` bytes arrive."""
    chunks, size, cap = [], 0, body_cap(request, limits)
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise RequestError(413, too_large_message(size, limits.max_upload_bytes) + " (the body was not read "
                                                                                       "to its end)")
        chunks.append(chunk)
    return b"".join(chunks)


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


def body_cap(request: Request, limits: UploadLimits) -> int:
    """Most body bytes read: the upload limit, plus room for the multipart framing around the file."""
    return limits.max_upload_bytes + (MULTIPART_ALLOWANCE if is_multipart(request) else 0)


async def read_upload(request: Request, limits: UploadLimits) -> Tuple[bytes, str]:
    """``(image bytes, label)`` from a multipart field ``image`` or from the raw body; the label names the
    upload in error messages."""
    if not is_multipart(request):
        return await read_body(request, limits), "the request body"
    body = await read_body(request, limits)
    sent = False

    async def replay():  # the body again, for Starlette's multipart parser
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as error:  # the parser's errors: a malformed multipart body
        raise RequestError(400, f"the multipart body could not be parsed: {error}") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise RequestError(400, f"the multipart body has no file field 'image' (its fields: {list(form.keys())})")
    data = await upload.read()
    await form.close()
    return data, f"upload {upload.filename or 'image'!r}"


def create_app(predictor: Predictor, settings: Optional[ServeSettings] = None) -> FastAPI:
    """The app serving ``predictor`` (module docstring). The queue starts and stops with the app."""
    settings = settings or ServeSettings()
    queue = BatchingQueue(ModelRunner(predictor), settings.max_batch, settings.max_queue)
    defaults = PredictOptions(predictor.score_thresh, predictor.max_detections,
                              tuple(name for name in predictor.cfg.infer.classes))
    limits = settings.limits
    with open(PAGE, encoding="utf-8") as file:
        page = file.read()

    async def lifespan(_app):
        queue.start()
        yield
        await queue.stop()

    # No /docs or /redoc: their pages load scripts from a CDN. /openapi.json stays.
    app = FastAPI(title="maskrcnn", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.queue = queue

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {
            "status": "ok", "model_loaded": True, "device": str(predictor.device),
            "weights": os.path.basename(predictor.weights), "class_names": list(predictor.class_names),
            "defaults": {"score_thresh": defaults.score_thresh, "max_detections": defaults.max_detections,
                         "classes": list(defaults.classes)},
            "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_image_pixels": limits.max_image_pixels,
                       "max_batch": settings.max_batch, "max_queue": settings.max_queue,
                       "timeout_s": settings.timeout_s},
            "queue": asdict(queue.stats),
        }

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        deadline = time.monotonic() + settings.timeout_s
        try:
            options = parse_options(request.query_params, predictor.class_names, defaults)
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > body_cap(request, limits):
                raise RequestError(413, too_large_message(int(declared), limits.max_upload_bytes))
            with queue.admission():
                try:
                    data, label = await asyncio.wait_for(read_upload(request, limits), deadline - time.monotonic())
                except asyncio.TimeoutError:
                    raise RequestError(408, f"the upload did not arrive within the server's time limit of "
                                            f"{settings.timeout_s:g} s (--timeout)") from None
                try:
                    decoded = await asyncio.wait_for(run_in_threadpool(decode_upload, data, label, limits),
                                                     deadline - time.monotonic())
                    del data
                    instances = await queue.submit((decoded, options), timeout=deadline - time.monotonic())
                except asyncio.TimeoutError:
                    raise RequestError(504, f"no answer within the server's time limit of {settings.timeout_s:g} s "
                                            "(--timeout); the server is busy or the image is very large") from None
                if options.format == "png":
                    picture = await run_in_threadpool(overlay_png, decoded, instances, predictor.class_names,
                                                      settings.overlay_max_side)
                    return Response(picture, media_type="image/png")
                return JSONResponse(await run_in_threadpool(prediction_json, decoded, instances))
        except RequestError as error:
            return error_response(error.status, error.message)
        except QueueFullError as error:
            return error_response(503, str(error), headers={"Retry-After": "1"})
        except Exception as error:  # the model or the drawing failed: say so, keep serving
            return error_response(500, f"the server failed on this request: {type(error).__name__}: {error}")

    return app
