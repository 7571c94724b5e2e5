"""What the OpenAPI document says that FastAPI cannot infer: the error answers and the sample bodies.

Every error the API answers has one shape, :class:`ErrorBody`; :func:`error_responses` declares it
for the statuses an operation can answer. ``POST /v1/samples`` and ``POST /v1/predict`` read their
raw bodies themselves (:func:`service.payloads.decode_samples`), so FastAPI sees no body parameter;
:func:`sample_batch_openapi` describes the wire forms of :mod:`service.payloads` for the route's
``openapi_extra``, and :func:`describe_model_input` adds, once a model is served, what depends on it
(the image shape, the label range). Declarations only: nothing here validates a request.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from service.payloads import DTYPES, IDENTIFIER_MAX_CHARS, NPY_MEDIA_TYPES, RAW_MEDIA_TYPE

#: The largest id SQLite stores (a signed 64-bit integer); path ids are bounded by it.
SQLITE_INTEGER_MAX = 2**63 - 1
#: What ``context`` and ``device_id`` must match (as :mod:`service.payloads` checks them).
IDENTIFIER_PATTERN = rf"^[A-Za-z0-9._:-]{{1,{IDENTIFIER_MAX_CHARS}}}$"


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str = Field(description="What is wrong, naming the field and why.")
    field: str | None = Field(
        default=None,
        description="The request field at fault (a path, query or body field, or `body`); null when none is.",
    )
    details: list[str] = Field(
        default_factory=list, description="For 422 from request validation: each problem found, one a line."
    )
    quota: str | None = Field(
        default=None, description="For 429 and 507 from `POST /v1/samples`: the setting whose limit the batch meets.")
    limit: int | None = Field(default=None, description="For a quota: its value, in samples.")
    held: int | None = Field(default=None, description="For a quota: the samples the context or device holds.")


#: What each error status means in this API; an operation may describe its own more precisely.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body is not valid JSON, or the Content-Length header is malformed.",
    401: "The bearer token is missing or wrong (`Authorization: Bearer <token>`).",
    404: "No such job or model version.",
    409: "The request conflicts with the daemon's state (see `error`).",
    413: "The body exceeds `max_body_bytes` (the answer also gives `limit_bytes`).",
    415: "The content type is not one this operation reads.",
    422: "A field is invalid: `field` names it, `error` says why.",
    500: "An internal error (the daemon's log holds the traceback), or a model file that cannot be served.",
    429: "The device is over its quota (`max_device_samples`) and none of its samples has been trained on yet: "
         "`quota`, `limit` and `held` say so; retry once a job has used them.",
    503: "The daemon is shutting down and takes no new work; retry once it is back.",
    507: "The sample buffer, or the context's quota (`max_context_samples`), cannot take the batch even after "
         "evicting every evictable sample; `quota` names which.",
}


def error_responses(*statuses: int, described: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` declaring :class:`ErrorBody` for ``statuses``; ``described`` overrides
    the generic description of some of them."""
    own = described or {}
    return {
        status: {"model": ErrorBody, "description": own.get(status, ERROR_DESCRIPTIONS[status])}
        for status in statuses
    }


def sample_batch_openapi(*, labelled: bool) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads a batch of samples; ``labelled`` makes ``labels``
    required (``/v1/samples``; ``/v1/predict`` takes none)."""
    # OpenAPI 3.1 (JSON Schema 2020-12) describes a raw byte body by its media type, not as a string.
    return {
        "requestBody": {
            "required": True,
            "description": (
                "A batch of images of the model's input shape (C, H, W): JSON (base64 `data` with `dtype` and "
                "`shape`, or nested-list `samples`), raw little-endian bytes in C order with `dtype`, `shape`"
                + (" and `labels`" if labelled else "")
                + " in the query or `X-*` headers, or a `.npy` file"
                + (" with `labels` beside it." if labelled else ".")
            ),
            "content": {
                "application/json": {"schema": {"oneOf": [_base64_form(labelled), _nested_form(labelled)]}},
                RAW_MEDIA_TYPE: {"schema": {"contentMediaType": RAW_MEDIA_TYPE}},
                **{media_type: {"schema": {"contentMediaType": media_type}} for media_type in NPY_MEDIA_TYPES},
            },
        },
        "parameters": [*_side_parameters("query", labelled), *_side_parameters("header", labelled)],
    }


def _identifier(what: str) -> dict[str, Any]:
    return {"type": "string", "pattern": IDENTIFIER_PATTERN, "description": what}


def _labels(labelled: bool) -> dict[str, Any]:
    needed = "one per sample" if labelled else "optional; when given, one per sample"
    return {
        "type": "array",
        "items": {"type": "integer", "minimum": 0},
        "minItems": 1,
        "description": f"Class indices 0..num_classes-1, {needed}.",
    }


def _common_fields(labelled: bool) -> dict[str, Any]:
    return {
        "labels": _labels(labelled),
        "context": _identifier("The context the samples come from (default `default`)."),
        "device_id": _identifier("The device that took them."),
    }


def _shape() -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"type": "integer", "minimum": 1},
        "minItems": 4,
        "maxItems": 4,
        "description": "[N, C, H, W]; C, H, W those of the model input, N at most `max_batch_samples`.",
    }


def _dtype() -> dict[str, Any]:
    return {"type": "string", "enum": list(DTYPES), "description": "uint8 (0..255) or float32 (finite, in [0, 1])."}


def _base64_form(labelled: bool) -> dict[str, Any]:
    return {
        "title": "Base64Batch",
        "type": "object",
        "additionalProperties": False,
        "required": ["dtype", "shape", "data", *(["labels"] if labelled else [])],
        "properties": {
            "dtype": _dtype(),
            "shape": _shape(),
            "data": {
                "type": "string",
                "contentEncoding": "base64",
                "description": "The raw little-endian bytes in C order, standard base64 with `=` padding.",
            },
            **_common_fields(labelled),
        },
    }


def _nested_form(labelled: bool) -> dict[str, Any]:
    numbers: dict[str, Any] = {"type": "array", "items": {"type": "number"}}
    for _ in range(2):
        numbers = {"type": "array", "items": numbers}
    return {
        "title": "NestedBatch",
        "type": "object",
        "additionalProperties": False,
        "required": ["samples", *(["labels"] if labelled else [])],
        "properties": {
            "samples": {
                "type": "array",
                "minItems": 1,
                "items": numbers,
                "description": (
                    "N×C×H×W nested lists of numbers; without `dtype`, integer literals make uint8 and any "
                    "decimal point or exponent makes float32."
                ),
            },
            "dtype": _dtype(),
            "shape": {**_shape(), "description": "Optional; when given it must match the samples."},
            **_common_fields(labelled),
        },
    }


def _side_parameters(location: str, labelled: bool) -> list[dict[str, Any]]:
    """The fields a binary body carries beside it: query parameters, or the ``X-*`` headers (a query
    parameter wins over its header)."""
    fields: list[tuple[str, str, dict[str, Any]]] = [
        ("dtype", "X-Dtype", {"type": "string", "enum": list(DTYPES)}),
        ("shape", "X-Shape", {"type": "string"}),
        ("labels", "X-Labels", {"type": "string"}),
        ("context", "X-Context", {"type": "string", "pattern": IDENTIFIER_PATTERN}),
        ("device_id", "X-Device-Id", {"type": "string", "pattern": IDENTIFIER_PATTERN}),
    ]
    what = {
        "dtype": f"For {RAW_MEDIA_TYPE}: uint8 or float32.",
        "shape": f"For {RAW_MEDIA_TYPE}: N,C,H,W (e.g. `64,3,32,32`).",
        "labels": "For binary bodies: one class index per sample, comma-separated (e.g. `3,1,4`)"
        + ("." if labelled else "; optional."),
        "context": "The samples' context, for a body that does not carry its own (default `default`).",
        "device_id": "The device that took them, for a body that does not carry its own.",
    }
    return [
        {
            "name": query_name if location == "query" else header_name,
            "in": location,
            "required": False,
            "schema": schema,
            "description": what[query_name]
            + ("" if location == "query" else f" The `{query_name}` query parameter wins over this header."),
        }
        for query_name, header_name, schema in fields
    ]


def describe_model_input(
    document: dict[str, Any], *, input_shape: tuple[int, int, int], num_classes: int, max_batch: int
) -> None:
    """Fill in, in place, what the sample bodies of an OpenAPI ``document`` depend on the served model:
    the image shape, the label range, the batch limit, and a one-image example of the base64 form."""
    channels, height, width = input_shape
    zero_image = base64.b64encode(bytes(channels * height * width)).decode("ascii")
    for path, labelled in (("/v1/samples", True), ("/v1/predict", False)):
        operation = document.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        json_body = operation["requestBody"]["content"]["application/json"]
        for form in json_body["schema"]["oneOf"]:
            fields = form["properties"]
            fields["shape"]["prefixItems"] = [
                {"type": "integer", "minimum": 1, "maximum": max_batch},
                *({"const": size} for size in input_shape),
            ]
            fields["labels"]["items"]["maximum"] = num_classes - 1
            fields["labels"]["maxItems"] = max_batch
        nested = json_body["schema"]["oneOf"][1]["properties"]["samples"]
        nested["maxItems"] = max_batch
        nested["description"] += f" Each sample is {channels}×{height}×{width}."
        example: dict[str, Any] = {"dtype": "uint8", "shape": [1, *input_shape], "data": zero_image}
        if labelled:
            example["labels"] = [0]
        json_body["examples"] = {
            "black-image": {"summary": f"One black {channels}×{height}×{width} uint8 image", "value": example}
        }
