"""Batches of labelled samples as IoT devices post them: decoding, validation and encoding.

Three wire forms carry the same batch, images of the model's input shape ``(C, H, W)``:

* JSON, base64: ``{"dtype": "uint8"|"float32", "shape": [N, C, H, W], "data": "<base64>",
  "labels": [...], "context"?: str, "device_id"?: str}``. ``data`` is the little-endian raw
  bytes in C order, base64 with the standard alphabet and ``=`` padding (RFC 4648 section 4).
* JSON, nested lists (small inputs, hand-written requests): ``{"samples": N×C×H×W lists,
  "labels": [...], "dtype"?: ..., "shape"?: ..., "context"?: ..., "device_id"?: ...}``. Without
  ``dtype`` the JSON number syntax decides: all integer literals make ``uint8``, any literal with
  a decimal point or an exponent (``0.5``, ``1.0``, ``1e-3``) makes ``float32``. With ``dtype``,
  ``uint8`` accepts whole numbers only (``3.0`` is fine) and ``float32`` accepts any number.
* A binary body: raw little-endian bytes (``application/octet-stream``) with ``dtype``,
  ``shape`` (``N,C,H,W``) and ``labels`` (``3,1,4``) given beside it, or a ``.npy`` file
  (``application/x-npy`` or ``application/npy``) with ``labels`` beside it. "Beside it" is a
  query parameter of that name, else an ``X-Dtype``/``X-Shape``/``X-Labels`` header; the same
  goes for ``context`` and ``device_id`` (``X-Context``, ``X-Device-Id``).

:func:`decode_samples` picks the decoder by media type; the ``decode_*_batch`` functions are the
forms one by one, and the ``encode_*_batch`` functions their inverses for clients.

Every batch is checked the same way: dtype ``uint8`` (0..255) or ``float32`` (finite, in
``[0, 1]``, the range the model takes), shape ``[N, C, H, W]`` equal to the model input,
``1 <= N <= max_batch``, one integer label per sample in ``0..num_classes-1`` (optional where
the caller decodes with ``labelled=False``, as ``/predict`` does), and ``context``
and ``device_id`` of 1 to 64 characters from ``A-Z a-z 0-9 . _ : -``. The first failure raises
:class:`PayloadError` with a message that names it.

Pure functions over numpy: no web framework here, so a client can use the encoders and tests
can run without a server. Must not import torch or fastapi.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The dtypes a batch may have; the model converts uint8 by dividing by 255.
DTYPES: tuple[str, ...] = ("uint8", "float32")
#: The context of samples posted without one.
DEFAULT_CONTEXT = "default"
#: Longest ``context`` or ``device_id``.
IDENTIFIER_MAX_CHARS = 64
#: Characters allowed in ``context`` and ``device_id``: safe in URLs, file names and log lines.
IDENTIFIER_CHARS = frozenset(string.ascii_letters + string.digits + "._:-")
#: Media types of the binary forms.
RAW_MEDIA_TYPE = "application/octet-stream"
NPY_MEDIA_TYPES: tuple[str, ...] = ("application/x-npy", "application/npy")

#: Fields a JSON batch may have.
JSON_FIELDS: tuple[str, ...] = (
    "dtype", "shape", "data", "samples", "labels", "context", "device_id",
)  # fmt: skip

_IDENTIFIER_RULE = "1 to 64 characters from A-Z a-z 0-9 . _ : -"
# ASCII digits only: int() would also take "1_000", " 7 " and non-ASCII digits.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_NPY_MAGIC = b"\x93NUMPY"
# Echoed values are cut so an error about a 10 MB field is not itself 10 MB.
_ECHO_CHARS = 40

InputShape = tuple[int, int, int]


class PayloadError(ValueError):
    """A batch that cannot be accepted: ``message`` names the problem, ``field`` where it is.

    ``field`` is one of ``body``, ``dtype``, ``shape``, ``data``, ``samples``, ``labels``,
    ``context``, ``device_id``. ``status`` is the HTTP status to answer with: 422 for a batch
    that was read but is wrong, 400 for a body that cannot be parsed (bad JSON), 415 for an
    unsupported content type. The body of the answer is :meth:`to_dict`.
    """

    def __init__(self, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status

    def to_dict(self) -> dict[str, str | None]:
        """The error as a JSON-ready object: ``{"error": message, "field": field}``."""
        return {"error": self.message, "field": self.field}


@dataclass(frozen=True, eq=False)
class SampleBatch:
    """A validated batch: ``x`` is ``(N, C, H, W)`` uint8 or float32, C-contiguous, native byte
    order and writable; ``labels`` is ``(N,)`` int64, or None for a batch decoded with
    ``labelled=False`` that carried no labels (``/predict``)."""

    x: np.ndarray
    labels: np.ndarray | None
    context: str = DEFAULT_CONTEXT
    device_id: str | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def dtype(self) -> str:
        """``"uint8"`` or ``"float32"``."""
        return self.x.dtype.name

    @property
    def payload_bytes(self) -> int:
        """Bytes of image data in the batch."""
        return int(self.x.nbytes)


# --- decoding --------------------------------------------------------------------------------


def decode_json_batch(
    body: Any,
    input_shape: Sequence[int],
    num_classes: int,
    max_batch: int,
    *,
    labelled: bool = True,
) -> SampleBatch:
    """Decode and validate a parsed JSON batch, base64 (``data``) or nested lists (``samples``).

    Raises :class:`PayloadError` for the first problem found; cheap checks (fields, shape, batch
    size, labels) run before the payload is decoded. With ``labelled=False`` labels may be left
    out (they are still checked when given).
    """
    model_shape = _model_shape(input_shape)
    if not isinstance(body, Mapping):
        raise PayloadError(f"body: expected a JSON object, got {_json_type(body)}", "body")
    unknown = [key for key in body if key not in JSON_FIELDS]
    if unknown:
        raise PayloadError(
            f"body: unknown field {_echo(unknown[0])}; expected some of {', '.join(JSON_FIELDS)}",
            "body",
        )
    has_data, has_samples = "data" in body, "samples" in body
    if has_data and has_samples:
        raise PayloadError(
            "body: send either data (base64) or samples (nested lists), not both", "body"
        )
    if not has_data and not has_samples:
        raise PayloadError(
            "body: missing data (base64 with dtype and shape) or samples (nested lists)", "body"
        )
    context = _context(body.get("context"))
    device_id = _device_id(body.get("device_id"))
    label_values = _labels_from_json(body.get("labels"), labelled)

    if has_data:
        x = _decode_base64_form(body, model_shape, max_batch, label_values, num_classes)
    else:
        x = _decode_nested_form(body, model_shape, max_batch, label_values, num_classes)
    return SampleBatch(x, _label_array(label_values), context, device_id)


def decode_raw_batch(
    body: bytes,
    dtype: str | None,
    shape: str | Sequence[int] | None,
    labels: str | Sequence[int | str] | None,
    input_shape: Sequence[int],
    num_classes: int,
    max_batch: int,
    *,
    context: str | None = None,
    device_id: str | None = None,
    labelled: bool = True,
) -> SampleBatch:
    """Decode and validate an ``application/octet-stream`` body: little-endian raw bytes in C order.

    ``dtype``, ``shape`` (``"N,C,H,W"``, brackets and spaces allowed, or a sequence) and ``labels``
    (``"3,1,4"`` or a sequence) come from the query or headers; ``None`` means the caller found
    none and is reported as missing (labels only when ``labelled``). ``context`` None means
    ``"default"``.
    """
    model_shape = _model_shape(input_shape)
    ctx, dev = _context(context), _device_id(device_id)
    if dtype is None:
        raise PayloadError("dtype: missing; send uint8 or float32", "dtype")
    dtype_name = _dtype_name(dtype)
    batch_shape = _shape_from_text(shape)
    count = _check_shape(batch_shape, model_shape, max_batch, "shape")
    label_values = _labels_from_text(labels, labelled)
    _check_labels(label_values, count, num_classes)
    x = _array_from_bytes(body, dtype_name, batch_shape, "body")
    return SampleBatch(x, _label_array(label_values), ctx, dev)


def decode_npy_batch(
    body: bytes,
    labels: str | Sequence[int | str] | None,
    input_shape: Sequence[int],
    num_classes: int,
    max_batch: int,
    *,
    context: str | None = None,
    device_id: str | None = None,
    labelled: bool = True,
) -> SampleBatch:
    """Decode and validate a ``.npy`` body (``np.save`` output) of shape ``(N, C, H, W)``.

    Never unpickles. The header is checked (dtype, shape, batch size, data length) before the
    array is loaded, so a small file declaring a huge array costs nothing. Fortran order and
    big-endian dtypes are accepted and converted; object, structured and other dtypes are refused.
    """
    model_shape = _model_shape(input_shape)
    ctx, dev = _context(context), _device_id(device_id)
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise PayloadError(f"body: expected bytes, got {type(body).__name__}", "body")
    body = bytes(body)
    if not body.startswith(_NPY_MAGIC):
        raise PayloadError(
            "body: not a .npy file (it must start with \\x93NUMPY; .npz and pickles are refused)",
            "body",
        )
    header_shape, dtype, data_bytes = _read_npy_header(body)
    if dtype.hasobject:
        raise PayloadError(
            f"dtype: the .npy array holds Python objects ({dtype}); send a uint8 or float32 array",
            "dtype",
        )
    if dtype.fields is not None or dtype.subdtype is not None or dtype.name not in DTYPES:
        described = "a structured dtype" if dtype.fields is not None else str(dtype)
        raise PayloadError(
            f"dtype: a .npy array of {described} is not supported; send uint8 or float32 "
            "(x.astype(np.float32))",
            "dtype",
        )
    count = _check_shape(header_shape, model_shape, max_batch, "shape")
    label_values = _labels_from_text(labels, labelled)
    _check_labels(label_values, count, num_classes)
    # Checked before loading: a small file must not make np.load allocate what its header claims.
    expected = math.prod(header_shape) * dtype.itemsize
    if data_bytes != expected:
        raise PayloadError(
            f"body: {data_bytes} bytes of .npy data {_fill_verb(data_bytes, expected)} shape "
            f"{_shape_text(header_shape)} of {dtype.name} ({expected} bytes)",
            "body",
        )
    try:
        loaded = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:  # the header said it fits; belt and braces
        raise PayloadError(f"body: not a valid .npy file: {exc}", "body") from exc
    # Native byte order and C order; one copy when either differs (big-endian, Fortran order).
    x = np.ascontiguousarray(loaded, dtype=dtype.newbyteorder("="))
    if dtype.name == "float32":
        _check_float_values(x, "body")
    return SampleBatch(x, _label_array(label_values), ctx, dev)


def decode_samples(
    body: bytes,
    *,
    content_type: str | None,
    params: Mapping[str, str],
    input_shape: Sequence[int],
    num_classes: int,
    max_batch: int,
    labelled: bool = True,
) -> SampleBatch:
    """Decode a request body by its media type: JSON, raw bytes or ``.npy``.

    ``params`` holds the query parameters and request headers (names in any case). Each of
    ``dtype``, ``shape``, ``labels``, ``context``, ``device_id`` is taken from the parameter of
    that name, else from the header ``X-Dtype``, ``X-Shape``, ``X-Labels``, ``X-Context``,
    ``X-Device-Id``. A JSON body carries its own and uses the parameters only for a
    ``context`` or ``device_id`` it leaves out. Raises :class:`PayloadError` with ``status`` 415
    for another or a missing media type and 400 for a body that is not JSON.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    lookup = {key.lower(): value for key, value in params.items()}
    context, device_id = _param(lookup, "context"), _param(lookup, "device_id")
    common: dict[str, Any] = {
        "input_shape": input_shape, "num_classes": num_classes, "max_batch": max_batch,
    }  # fmt: skip
    if media_type == "application/json" or media_type.endswith("+json"):
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise PayloadError(f"body: not valid JSON: {exc}", "body", status=400) from exc
        if isinstance(parsed, dict):
            # The body's own fields win; the parameters fill in what it leaves out.
            for name, value in (("context", context), ("device_id", device_id)):
                if value is not None and parsed.get(name) is None:
                    parsed[name] = value
        return decode_json_batch(parsed, **common, labelled=labelled)
    if media_type == RAW_MEDIA_TYPE:
        return decode_raw_batch(
            body,
            _param(lookup, "dtype"),
            _param(lookup, "shape"),
            _param(lookup, "labels"),
            **common,
            context=context,
            device_id=device_id,
            labelled=labelled,
        )
    if media_type in NPY_MEDIA_TYPES:
        return decode_npy_batch(
            body,
            _param(lookup, "labels"),
            **common,
            context=context,
            device_id=device_id,
            labelled=labelled,
        )
    shown = f"unsupported content type {media_type!r}" if media_type else "missing content type"
    raise PayloadError(
        f"{shown}; send application/json, {RAW_MEDIA_TYPE} or {NPY_MEDIA_TYPES[0]}",
        "body",
        status=415,
    )


def _param(lookup: Mapping[str, str], name: str) -> str | None:
    """A query parameter ``name``, else the header ``X-Name`` (underscores as hyphens)."""
    value = lookup.get(name)
    return value if value is not None else lookup.get("x-" + name.replace("_", "-"))


# --- encoding --------------------------------------------------------------------------------


def encode_json_batch(
    x: np.ndarray,
    labels: Sequence[int] | np.ndarray | None,
    context: str | None = None,
    device_id: str | None = None,
) -> dict[str, Any]:
    """The base64 JSON form of a batch, ready for ``json.dumps``; the inverse of
    :func:`decode_json_batch`. ``labels`` (None for ``/predict``), ``context`` and ``device_id``
    are left out when None."""
    array = _encodable(x)
    body: dict[str, Any] = {
        "dtype": array.dtype.name,
        "shape": [int(n) for n in array.shape],
        "data": base64.b64encode(_little_endian_bytes(array)).decode("ascii"),
    }
    if labels is not None:
        body["labels"] = _encodable_labels(labels, len(array))
    if context is not None:
        body["context"] = _identifier(context, "context")
    if device_id is not None:
        body["device_id"] = _identifier(device_id, "device_id")
    return body


def encode_raw_batch(
    x: np.ndarray,
    labels: Sequence[int] | np.ndarray | None = None,
    context: str | None = None,
    device_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The ``application/octet-stream`` form: the body and the parameters to send beside it
    (``dtype``, ``shape`` as ``"N,C,H,W"``, and ``labels``, ``context``, ``device_id`` when given),
    all strings, ready to be query parameters."""
    array = _encodable(x)
    params = {"dtype": array.dtype.name, "shape": ",".join(str(int(n)) for n in array.shape)}
    if labels is not None:
        params["labels"] = ",".join(str(v) for v in _encodable_labels(labels, len(array)))
    if context is not None:
        params["context"] = _identifier(context, "context")
    if device_id is not None:
        params["device_id"] = _identifier(device_id, "device_id")
    return _little_endian_bytes(array), params


def encode_npy_batch(x: np.ndarray) -> bytes:
    """The ``.npy`` form of a batch (``np.save`` without pickling)."""
    buffer = io.BytesIO()
    np.save(buffer, _encodable(x), allow_pickle=False)
    return buffer.getvalue()


# --- the two JSON forms ----------------------------------------------------------------------


def _decode_base64_form(
    body: Mapping[str, Any],
    model_shape: InputShape,
    max_batch: int,
    label_values: list[int] | None,
    num_classes: int,
) -> np.ndarray:
    if body.get("dtype") is None:
        raise PayloadError("dtype: missing; base64 data needs dtype uint8 or float32", "dtype")
    dtype_name = _dtype_name(body["dtype"])
    if "shape" not in body:
        raise PayloadError("shape: missing; base64 data needs shape [N, C, H, W]", "shape")
    batch_shape = _shape_from_json(body["shape"])
    count = _check_shape(batch_shape, model_shape, max_batch, "shape")
    _check_labels(label_values, count, num_classes)
    data = body["data"]
    if not isinstance(data, str):
        raise PayloadError(f"data: expected a base64 string, got {_json_type(data)}", "data")
    return _array_from_bytes(_base64_bytes(data), dtype_name, batch_shape, "data")


def _decode_nested_form(
    body: Mapping[str, Any],
    model_shape: InputShape,
    max_batch: int,
    label_values: list[int] | None,
    num_classes: int,
) -> np.ndarray:
    samples = body["samples"]
    # Without a dtype the JSON number syntax decides, once numpy has read the lists.
    dtype_name = None if body.get("dtype") is None else _dtype_name(body["dtype"])
    if not isinstance(samples, list):
        raise PayloadError(
            f"samples: expected nested lists N×C×H×W, got {_json_type(samples)}", "samples"
        )
    # Size the batch before numpy walks the lists: a huge batch is refused without building it.
    count = len(samples)
    if count == 0:
        raise PayloadError("empty batch: send at least one sample", "samples")
    if count > max_batch:
        raise PayloadError(
            f"batch of {count} samples exceeds the limit of {max_batch}", "samples"
        )
    _check_labels(label_values, count, num_classes)
    expected = (count, *model_shape)
    try:
        values = np.array(samples)
    except (ValueError, TypeError, OverflowError) as exc:
        message = _ragged_message(samples, expected) or f"samples: {exc}"
        raise PayloadError(message, "samples") from exc
    if values.dtype.kind == "b":
        raise PayloadError("samples: values must be numbers, not true/false", "samples")
    if values.dtype.kind not in "iuf":
        # Strings, null, or integers too large for int64 (numpy falls back to object).
        raise PayloadError(
            "samples: values must be numbers; found strings, null or integers out of range",
            "samples",
        )
    _check_shape(values.shape, model_shape, max_batch, "samples")
    if "shape" in body:
        declared = _shape_from_json(body["shape"])
        if declared != values.shape:
            raise PayloadError(
                f"shape {_shape_text(declared)} does not match the samples, which are "
                f"{_shape_text(values.shape)}",
                "shape",
            )
    if _holds_bool(samples):
        # numpy silently turns true into 1 when it sits among numbers.
        raise PayloadError("samples: values must be numbers, not true/false", "samples")
    if dtype_name is None:
        dtype_name = "float32" if values.dtype.kind == "f" else "uint8"
    if dtype_name == "uint8":
        _check_uint8_values(values)
        return np.ascontiguousarray(values, dtype=np.uint8)
    # Checked before the cast, where a huge float64 would become inf.
    _check_float_values(values, "samples")
    return np.ascontiguousarray(values, dtype=np.float32)


# --- checks ----------------------------------------------------------------------------------


def _model_shape(input_shape: Sequence[int]) -> InputShape:
    shape = [int(n) for n in input_shape]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) of positive integers, got {input_shape}")
    return (shape[0], shape[1], shape[2])


def _check_shape(
    shape: Sequence[int], model_shape: InputShape, max_batch: int, field: str
) -> int:
    """Check ``[N, C, H, W]`` against the model and the batch limit; return ``N``."""
    if len(shape) != 4 or tuple(shape[1:]) != model_shape:
        raise PayloadError(
            f"shape {_shape_text(shape)} does not match the model input {model_shape}: "
            f"expected {_shape_text(('N', *model_shape))}",
            field,
        )
    count = int(shape[0])
    if count == 0:
        raise PayloadError("empty batch: send at least one sample", field)
    if count > max_batch:
        raise PayloadError(f"batch of {count} samples exceeds the limit of {max_batch}", field)
    return count


def _check_labels(values: list[int] | None, count: int, num_classes: int) -> None:
    if values is None:  # an unlabelled batch, allowed by the caller
        return
    if len(values) != count:
        raise PayloadError(
            f"labels: {_plural(len(values), 'label')} for {_plural(count, 'sample')}", "labels"
        )
    for index, value in enumerate(values):
        if not 0 <= value < num_classes:
            raise PayloadError(
                f"label {_echo(value)} at index {index} is out of range 0..{num_classes - 1}",
                "labels",
            )


def _check_uint8_values(values: np.ndarray) -> None:
    if values.dtype.kind == "f":
        whole = np.isfinite(values) & (values == np.floor(values))
        fractional = int(values.size - np.count_nonzero(whole))
        if fractional:
            first = values[~whole].flat[0]
            raise PayloadError(
                f"uint8 values must be whole numbers: {_plural(fractional, 'value')} "
                f"{'is' if fractional == 1 else 'are'} not (the first is {float(first)!r})",
                "samples",
            )
    low, high = values.min(), values.max()
    if low < 0 or high > 255:
        outside = int(np.count_nonzero((values < 0) | (values > 255)))
        raise PayloadError(
            f"uint8 values must lie in 0..255: {_plural(outside, 'value')} outside "
            f"(min {_number(low)}, max {_number(high)})",
            "samples",
        )


def _check_float_values(values: np.ndarray, field: str) -> None:
    """Finite and within [0, 1], the range the model takes (uint8 images are sent as 0..255)."""
    finite = np.isfinite(values)
    bad = int(values.size - np.count_nonzero(finite))
    if bad:
        raise PayloadError(
            f"float32 samples must be finite: {bad} NaN or infinite "
            f"{'value' if bad == 1 else 'values'}",
            field,
        )
    low, high = values.min(), values.max()
    if low < 0 or high > 1:
        outside = int(np.count_nonzero((values < 0) | (values > 1)))
        raise PayloadError(
            f"float32 values must lie in [0, 1], the range the model takes (send uint8 for "
            f"0..255): {_plural(outside, 'value')} outside "
            f"(min {_number(low)}, max {_number(high)})",
            field,
        )


def _context(value: Any) -> str:
    return DEFAULT_CONTEXT if value is None else _identifier(value, "context")


def _device_id(value: Any) -> str | None:
    return None if value is None else _identifier(value, "device_id")


def _identifier(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"{field}: expected a string, got {_json_type(value)}", field)
    if not 1 <= len(value) <= IDENTIFIER_MAX_CHARS:
        raise PayloadError(
            f"{field}: must be {_IDENTIFIER_RULE}; got {len(value)} characters", field
        )
    for position, char in enumerate(value):
        if char not in IDENTIFIER_CHARS:
            raise PayloadError(
                f"{field}: character {char!r} at position {position} is not allowed; "
                f"use {_IDENTIFIER_RULE}",
                field,
            )
    return value


# --- parsing the parts -----------------------------------------------------------------------


def _dtype_name(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in DTYPES:
        raise PayloadError(
            f"dtype: {_echo(value)} is not supported; send uint8 or float32", "dtype"
        )
    return value.strip().lower()


def _shape_from_json(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(n) for n in value):
        raise PayloadError(
            f"shape: expected a list of integers [N, C, H, W], got {_echo(value)}", "shape"
        )
    return _non_negative([int(n) for n in value])


def _shape_from_text(value: str | Sequence[int] | None) -> tuple[int, ...]:
    if value is None:
        raise PayloadError("shape: missing; send N,C,H,W", "shape")
    if isinstance(value, str):
        tokens = [t.strip() for t in value.strip().strip("[]()").split(",")]
        if not all(_INTEGER_TEXT.fullmatch(t) for t in tokens):
            raise PayloadError(
                f"shape: {_echo(value)} is not a comma-separated list of integers N,C,H,W", "shape"
            )
        return _non_negative([int(t) for t in tokens])
    if not all(_is_int(n) for n in value):
        raise PayloadError(f"shape: expected integers N,C,H,W, got {_echo(list(value))}", "shape")
    return _non_negative([int(n) for n in value])


def _non_negative(shape: list[int]) -> tuple[int, ...]:
    if any(n < 0 for n in shape):
        raise PayloadError(f"shape {_shape_text(shape)} has a negative dimension", "shape")
    return tuple(shape)


def _labels_from_json(value: Any, labelled: bool) -> list[int] | None:
    if value is None:
        if labelled:
            raise PayloadError("labels: missing; send one integer label per sample", "labels")
        return None
    if not isinstance(value, list):
        raise PayloadError(
            f"labels: expected a list of integers, got {_json_type(value)}", "labels"
        )
    for index, label in enumerate(value):
        if not _is_int(label):
            raise PayloadError(
                f"labels: label at index {index} is {_echo(label)}, not an integer", "labels"
            )
    return [int(label) for label in value]


def _labels_from_text(value: str | Sequence[int | str] | None, labelled: bool) -> list[int] | None:
    if value is None:
        if labelled:
            raise PayloadError(
                "labels: missing; send one integer per sample, comma-separated (3,1,4)", "labels"
            )
        return None
    if isinstance(value, str):
        text = value.strip()
        tokens: Sequence[int | str] = [t.strip() for t in text.split(",")] if text else []
    else:
        tokens = value
    labels: list[int] = []
    for index, token in enumerate(tokens):
        if isinstance(token, str) and _INTEGER_TEXT.fullmatch(token.strip()):
            labels.append(int(token.strip()))
        elif _is_int(token):
            labels.append(int(token))
        elif token == "":
            raise PayloadError(f"labels: empty label at index {index}", "labels")
        else:
            raise PayloadError(
                f"labels: label at index {index} is {_echo(token)}, not an integer", "labels"
            )
    return labels


def _label_array(values: list[int] | None) -> np.ndarray | None:
    return None if values is None else np.array(values, dtype=np.int64)


def _base64_bytes(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        # MIME encoders wrap lines every 76 characters; allow that, nothing else.
        if any(c in data for c in " \t\r\n"):
            try:
                return base64.b64decode("".join(data.split()), validate=True)
            except (binascii.Error, ValueError):
                pass
        raise PayloadError(
            f"data: not valid base64 (standard alphabet, '=' padding): {exc}", "data"
        ) from exc


def _array_from_bytes(
    raw: bytes, dtype_name: str, shape: tuple[int, ...], field: str
) -> np.ndarray:
    """Interpret little-endian C-order bytes; the result is a native-order writable copy."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise PayloadError(f"{field}: expected bytes, got {type(raw).__name__}", field)
    raw = bytes(raw)  # len() of a memoryview counts items, not bytes; no copy for bytes
    wire = np.dtype(dtype_name).newbyteorder("<")
    expected = math.prod(shape) * wire.itemsize
    if len(raw) != expected:
        raise PayloadError(
            f"{field}: {len(raw)} bytes {_fill_verb(len(raw), expected)} shape "
            f"{_shape_text(shape)} of {dtype_name} ({expected} bytes)",
            field,
        )
    x = np.frombuffer(raw, dtype=wire).reshape(shape).astype(np.dtype(dtype_name), copy=True)
    if dtype_name == "float32":
        _check_float_values(x, field)
    return x


def _read_npy_header(body: bytes) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """Shape, dtype and the number of data bytes after the header of a ``.npy`` file."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            # Version 3 exists only for structured dtypes with non-Latin-1 field names.
            raise PayloadError(
                f"body: .npy format version {version[0]}.{version[1]} is not supported; "
                "save a plain uint8 or float32 array",
                "body",
            )
    except PayloadError:
        raise
    except (ValueError, EOFError) as exc:
        raise PayloadError(f"body: not a valid .npy header: {exc}", "body") from exc
    return tuple(int(n) for n in shape), dtype, len(body) - stream.tell()


def _ragged_message(samples: list[Any], expected: tuple[int, ...]) -> str | None:
    """Name the first list in ``samples`` whose length differs from the model's shape."""
    names = ("samples", "channels", "rows", "values")
    stack: list[tuple[Any, str, int]] = [(samples, "samples", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth == len(expected):
            if isinstance(node, (list, tuple)):
                return f"samples: {path} is a list, expected a number"
            continue
        if not isinstance(node, (list, tuple)):
            return (
                f"samples: {path} is {_echo(node)}, expected a list of {expected[depth]} "
                f"{names[depth]}"
            )
        if len(node) != expected[depth]:
            return (
                f"samples: {path} has {len(node)} items, expected {expected[depth]} {names[depth]} "
                f"(samples must be nested lists {_shape_text(expected)})"
            )
        # Reversed so the first offending element is found first (a stack pops from the end).
        children = [(child, f"{path}[{i}]", depth + 1) for i, child in enumerate(node)]
        stack.extend(reversed(children))
    return None


def _holds_bool(samples: list[Any]) -> bool:
    """Whether a ``true``/``false`` hides among the numbers of N×C×H×W nested lists."""
    return any(
        type(v) is bool for sample in samples for channel in sample for row in channel for v in row
    )


# --- encoding helpers ------------------------------------------------------------------------


def _encodable(x: np.ndarray) -> np.ndarray:
    array = np.asarray(x)
    if array.dtype.name not in DTYPES or array.dtype.fields is not None:
        raise PayloadError(
            f"dtype: {array.dtype} is not supported; send uint8 or float32", "dtype"
        )
    if array.ndim != 4:
        raise PayloadError(
            f"shape {_shape_text(array.shape)} is not a batch: expected [N, C, H, W]", "shape"
        )
    return array


def _encodable_labels(labels: Sequence[int] | np.ndarray, count: int) -> list[int]:
    values = np.asarray(labels).reshape(-1)
    if values.size and values.dtype.kind not in "iu":
        raise PayloadError(f"labels: expected integers, got {values.dtype}", "labels")
    if values.size != count:
        raise PayloadError(
            f"labels: {_plural(int(values.size), 'label')} for {_plural(count, 'sample')}",
            "labels",
        )
    return [int(v) for v in values]


def _little_endian_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


# --- small helpers ---------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    """An integer, not a bool (JSON true is a Python int subclass) and not a float."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _shape_text(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def _fill_verb(actual_bytes: int, expected_bytes: int) -> str:
    return "do not fill" if actual_bytes < expected_bytes else "overflow"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _number(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _echo(value: Any) -> str:
    """A value as JSON (``true``, ``"x"``, ``1.5``), cut to a readable length."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _ECHO_CHARS else text[: _ECHO_CHARS - 3] + "..."
