"""The proxy's routes: image ids in, predictions and ground truth out (see docs/proxy.md)."""
from __future__ import annotations

import base64
import re

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request

from cityseg import images as I
from cityseg import vocabulary as V
from proxy import masks
from proxy.errors import RETRY_AFTER_S, error_response, log_serving_failure
from proxy.openapi import openapi_document
from proxy.resolver import CorruptFile, ImageRecord, Resolver
from serving.client import (ServingError, ServingInvalidArgument, ServingTimeout,
                            ServingUnavailable)

bp = Blueprint("proxy", __name__)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
STYLES = ("ids", "color")
_CITY_RE = re.compile(r"^[a-z]+(?:-[a-z]+)*$")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")


def resolver() -> Resolver:
    return current_app.extensions["cityseg_resolver"]


def gateway():
    return current_app.extensions["cityseg_gateway"]


# --- listing -----------------------------------------------------------------------------

@bp.get("/api/v1/images")
def list_images():
    """Ids known to the proxy, filtered by split and city, one page at a time."""
    split = request.args.get("split") or None
    city = request.args.get("city") or None
    if split is not None:
        try:
            V.check_split(split)
        except ValueError as err:
            abort(400, str(err))
    if city is not None and (len(city) > V.MAX_IMAGE_ID_LENGTH or not _CITY_RE.match(city)):
        abort(400, "city must be lower-case letters and hyphens, e.g. frankfurt")
    limit = _int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _int_arg("offset", 0, 0, 10**9)
    total, page = resolver().list(split=split, city=city, limit=limit, offset=offset)
    return jsonify(
        total=total, limit=limit, offset=offset, images=[r.summary() for r in page],
        splits=resolver().split_counts, cities=resolver().cities)


# --- one image ---------------------------------------------------------------------------

# `path:` so that anything after /images/ reaches the id check (and gets a 400 that says why)
# rather than falling through the router as a 404.
@bp.get("/api/v1/images/<path:image_id>/segmentation")
def segmentation(image_id: str):
    """Prediction, ground truth and this image's metrics, as one JSON document."""
    record = resolver().lookup(image_id)
    prediction, mask = _predict_record(record)
    truth = resolver().read_ground_truth(record)
    if truth is not None and truth.shape != mask.shape:
        raise ServingError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                           f"{truth.shape[1]}x{truth.shape[0]}")
    height, width = mask.shape
    return jsonify(
        image_id=record.image_id, split=record.split, city=record.city,
        width=int(width), height=int(height),
        model={"name": prediction.model_name, "version": prediction.model_version},
        categories=masks.categories(),
        prediction=_b64(I.encode_png(mask)),
        ground_truth=None if truth is None else _b64(I.encode_png(truth)),
        metrics=None if truth is None else masks.image_metrics(truth, mask),
    )


@bp.get("/api/v1/images/<path:image_id>/prediction.png")
def prediction_png(image_id: str):
    """The predicted mask (category ids, or the palette with ?style=color)."""
    style = _style()
    record = resolver().lookup(image_id)
    prediction, mask = _predict_record(record)
    response = _png(I.palette_png(mask) if style == "color" else I.encode_png(mask))
    _model_headers(response, prediction)
    return response


@bp.get("/api/v1/images/<path:image_id>/ground_truth.png")
def ground_truth_png(image_id: str):
    """The ground truth: the official remap of the raw label at full resolution."""
    style = _style()
    record = resolver().lookup(image_id)
    truth = resolver().read_ground_truth(record)
    if truth is None:
        abort(404, f"image id {record.image_id} has no ground truth")
    return _png(I.palette_png(truth) if style == "color" else I.encode_png(truth))


@bp.get("/api/v1/images/<path:image_id>/image.png")
def image_png(image_id: str):
    """The raw camera image, exactly as stored."""
    record = resolver().lookup(image_id)
    data = resolver().read_image(record)
    return Response(data, mimetype=f"image/{I.sniff_format(data) or 'png'}")


# --- uploads -----------------------------------------------------------------------------

@bp.post("/api/v1/predict")
def predict_upload():
    """The predicted mask (PNG) for an uploaded PNG or JPEG (multipart field `image`)."""
    style = _style()
    upload = request.files.get("image")
    if upload is None:
        abort(400, "send the image as multipart/form-data field 'image'")
    data = upload.read()
    if not data:
        abort(400, "the uploaded image is empty")
    if I.sniff_format(data) is None:
        abort(415, "unsupported image type: send a PNG or JPEG")
    try:
        height, width = I.image_size(data)
    except I.ImageHeaderError as err:
        abort(400, f"unreadable image: {err}")
    max_pixels = current_app.config["MAX_PIXELS"]
    try:
        I.check_pixel_budget(data, max_pixels)
    except I.ImageHeaderError as err:
        abort(413 if height * width > max_pixels else 400, str(err))
    prediction = gateway().predict([data])
    mask = masks.decode_mask(prediction.masks[0])
    response = _png(I.palette_png(mask) if style == "color" else I.encode_png(mask))
    _model_headers(response, prediction)
    return response


# --- operations --------------------------------------------------------------------------

@bp.get("/healthz")
def healthz():
    """Liveness: the process answers and its manifest is loaded."""
    return jsonify(status="ok", images=len(resolver()))


@bp.get("/readyz")
def readyz():
    """Readiness: 200 only while the model has an AVAILABLE version in the model server."""
    name = gateway().model
    try:
        versions = gateway().ready_versions()
    except (ServingUnavailable, ServingTimeout) as err:
        log_serving_failure(err)
        return _not_ready("model server unreachable")
    except ServingError as err:
        log_serving_failure(err)
        return _not_ready(f"model server reachable; model {name} not available")
    if not versions:
        return _not_ready(f"model server reachable; model {name} has no AVAILABLE version")
    return jsonify(status="ready", model={"name": name, "versions": versions})


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 description of this API."""
    return jsonify(openapi_document())


@bp.get("/")
def index():
    """The web page."""
    return render_template("index.html", model=gateway().model,
                           categories=masks.categories())


# --- helpers -----------------------------------------------------------------------------

def _predict_record(record: ImageRecord):
    try:
        prediction = gateway().predict([resolver().read_image(record)])
    except ServingInvalidArgument as err:
        # The stored file went to the server unchanged: its refusal is a fault of our data,
        # not of the client's request (an upload refused this way is the client's: 400).
        raise CorruptFile(f"stored image of {record.image_id} is corrupt") from err
    return prediction, masks.decode_mask(prediction.masks[0])


def _style() -> str:
    style = request.args.get("style", "ids")
    if style not in STYLES:
        abort(400, f"style must be one of {', '.join(STYLES)}")
    return style


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    # fullmatch on ASCII digits: str.isdigit() also accepts '²', which int() rejects.
    if not _DIGITS_RE.fullmatch(text) or not low <= int(text) <= high:
        abort(400, f"{name} must be an integer from {low} to {high}")
    return int(text)


def _png(data: bytes) -> Response:
    return Response(data, mimetype="image/png")


def _model_headers(response: Response, prediction) -> None:
    response.headers["X-Model-Name"] = prediction.model_name
    response.headers["X-Model-Version"] = str(prediction.model_version)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _not_ready(message: str):
    return error_response(503, message, {"Retry-After": str(RETRY_AFTER_S)})
