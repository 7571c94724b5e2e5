"""Batches of labelled samples: every validation error with its message, and exact round trips
through base64 JSON, nested lists, raw bytes and .npy."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from service.payloads import (
    DEFAULT_CONTEXT,
    PayloadError,
    SampleBatch,
    decode_json_batch,
    decode_npy_batch,
    decode_raw_batch,
    decode_samples,
    encode_json_batch,
    encode_npy_batch,
    encode_raw_batch,
)

MODEL = (3, 32, 32)
CLASSES = 10
LIMIT = 1024
SMALL = (3, 4, 4)  # nested-list tests: a 3×32×32 sample is 3,072 numbers to write out


def images(n: int, dtype: str, shape: tuple[int, ...] = MODEL, seed: int = 0) -> np.ndarray:
    """``n`` images of ``shape``: uint8 over 0..255, float32 over [0, 1] with both ends."""
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        x.flat[0], x.flat[-1] = 0, 255
        return x
    x = rng.random(size=(n, *shape), dtype=np.float32)
    x.flat[0], x.flat[-1] = 0.0, 1.0
    return x


def labels_for(n: int) -> list[int]:
    return [i % CLASSES for i in range(n)]


def json_body(n: int = 2, kind: str = "uint8", **changes: Any) -> dict[str, Any]:
    """A valid base64 JSON batch of ``kind`` images, with fields replaced (or removed when
    given as ``...``)."""
    body = encode_json_batch(images(n, kind), labels_for(n))
    for key, value in changes.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def nested_body(samples: Any, labels: Any = None, **extra: Any) -> dict[str, Any]:
    count = len(samples) if isinstance(samples, list) else 0
    return {"samples": samples, "labels": labels_for(count) if labels is None else labels, **extra}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def error(call: Callable[[], object]) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        call()
    return caught.value


def decode_json(body: Any, shape: tuple[int, int, int] = MODEL) -> SampleBatch:
    return decode_json_batch(body, shape, CLASSES, LIMIT)


def decode_raw(body: bytes, dtype: Any, shape: Any, labels: Any, **kw: Any) -> SampleBatch:
    return decode_raw_batch(body, dtype, shape, labels, MODEL, CLASSES, LIMIT, **kw)


def decode_npy(body: bytes, labels: Any, **kw: Any) -> SampleBatch:
    return decode_npy_batch(body, labels, MODEL, CLASSES, LIMIT, **kw)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def assert_well_formed(batch: SampleBatch, x: np.ndarray, labels: list[int]) -> None:
    """Bit-exact values, and the promised layout: C order, native byte order, writable."""
    assert batch.x.dtype == x.dtype.newbyteorder("=") and batch.x.dtype.isnative
    assert batch.x.shape == x.shape
    assert batch.x.tobytes() == np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("=")).tobytes()
    assert batch.x.flags.c_contiguous and batch.x.flags.writeable
    assert batch.labels.dtype == np.int64 and batch.labels.tolist() == labels
    assert len(batch) == len(labels)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_base64_json_round_trip_is_exact(dtype: str) -> None:
    x = images(5, dtype)
    body = encode_json_batch(x, labels_for(5), context="lab-2:night", device_id="esp32.07")
    batch = decode_json(json.loads(json.dumps(body)))
    assert_well_formed(batch, x, labels_for(5))
    assert (batch.context, batch.device_id) == ("lab-2:night", "esp32.07")
    assert batch.dtype == dtype and batch.payload_bytes == x.nbytes


def test_base64_data_is_little_endian_c_order() -> None:
    x = np.array([0.25, 0.5, 1.0], dtype="<f4").reshape(1, 3, 1, 1)
    body = encode_json_batch(x, [3])
    assert base64.b64decode(body["data"]) == x.tobytes()
    assert body == {"dtype": "float32", "shape": [1, 3, 1, 1], "data": body["data"], "labels": [3]}


def test_base64_wrapped_in_lines_is_accepted() -> None:
    x = images(1, "uint8")
    text = base64.encodebytes(x.tobytes()).decode("ascii")  # MIME: a newline every 76 chars
    assert "\n" in text
    batch = decode_json(json_body(1, data=text, shape=[1, *MODEL], labels=[4]))
    assert_well_formed(batch, x, [4])


def test_defaults_for_context_and_device_id() -> None:
    batch = decode_json(json_body(2))
    assert (batch.context, batch.device_id) == (DEFAULT_CONTEXT, None) == ("default", None)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_nested_list_round_trip_is_exact(dtype: str) -> None:
    x = images(3, dtype, SMALL)
    body = json.loads(json.dumps({"samples": x.tolist(), "labels": [1, 2, 3]}))
    batch = decode_json(body, SMALL)
    assert_well_formed(batch, x, [1, 2, 3])


def test_nested_list_dtype_follows_json_number_syntax() -> None:
    ones = [[[[1, 0], [0, 1]]]]  # integer literals → uint8
    assert decode_json(nested_body(ones), (1, 2, 2)).x.dtype == np.uint8
    mixed = [[[[1, 0.5], [0, 1]]]]  # one decimal point → float32
    assert decode_json(nested_body(mixed), (1, 2, 2)).x.dtype == np.float32
    as_float = json.loads('{"samples": [[[[1.0, 0.0], [0.0, 1.0]]]], "labels": [0]}')
    assert decode_json(as_float, (1, 2, 2)).x.dtype == np.float32


def test_nested_list_explicit_dtype() -> None:
    integral = [[[[3.0, 255.0], [0.0, 7.0]]]]
    batch = decode_json(nested_body(integral, dtype="uint8"), (1, 2, 2))
    assert batch.x.dtype == np.uint8 and batch.x.ravel().tolist() == [3, 255, 0, 7]
    binary = [[[[1, 0], [0, 1]]]]
    batch = decode_json(nested_body(binary, dtype="float32"), (1, 2, 2))
    assert batch.x.dtype == np.float32 and batch.x.ravel().tolist() == [1.0, 0.0, 0.0, 1.0]


def test_nested_list_with_matching_shape_is_accepted() -> None:
    x = images(2, "uint8", SMALL)
    batch = decode_json(nested_body(x.tolist(), shape=[2, *SMALL]), SMALL)
    assert_well_formed(batch, x, [0, 1])


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_raw_round_trip_is_exact(dtype: str) -> None:
    x = images(4, dtype)
    body, params = encode_raw_batch(x, labels_for(4), context="field", device_id="m5")
    assert params == {
        "dtype": dtype, "shape": "4,3,32,32", "labels": "0,1,2,3", "context": "field",
        "device_id": "m5",
    }  # fmt: skip
    assert body == x.astype(x.dtype.newbyteorder("<")).tobytes()
    batch = decode_raw(
        body, params["dtype"], params["shape"], params["labels"],
        context=params["context"], device_id=params["device_id"],
    )  # fmt: skip
    assert_well_formed(batch, x, labels_for(4))
    assert (batch.context, batch.device_id) == ("field", "m5")


def test_raw_accepts_sequences_and_bracketed_text() -> None:
    x = images(2, "uint8")
    body, _ = encode_raw_batch(x)
    forms: list[tuple[Any, Any]] = [
        ((2, 3, 32, 32), [7, 8]), ("[2, 3, 32, 32]", " 7 , 8 "), ("2,3,32,32", ["7", "8"]),
    ]  # fmt: skip
    for shape, labels in forms:
        assert_well_formed(decode_raw(body, "uint8", shape, labels), x, [7, 8])


def test_raw_dtype_name_ignores_case() -> None:
    x = images(1, "float32")
    body, _ = encode_raw_batch(x)
    assert decode_raw(body, "Float32", "1,3,32,32", "0").x.dtype == np.float32


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_npy_round_trip_is_exact(dtype: str) -> None:
    x = images(3, dtype)
    batch = decode_npy(encode_npy_batch(x), "1,2,3", context="c1")
    assert_well_formed(batch, x, [1, 2, 3])
    assert batch.context == "c1"


def test_npy_big_endian_is_converted() -> None:
    x = images(2, "float32").astype(">f4")
    batch = decode_npy(npy_bytes(x), [0, 1])
    assert batch.x.dtype == np.dtype("float32") and batch.x.dtype.isnative
    np.testing.assert_array_equal(batch.x, x)
    assert_well_formed(batch, x, [0, 1])


def test_npy_fortran_order_is_made_contiguous() -> None:
    x = np.asfortranarray(images(2, "uint8"))
    assert not x.flags.c_contiguous
    batch = decode_npy(npy_bytes(x), "0,1")
    np.testing.assert_array_equal(batch.x, x)
    assert_well_formed(batch, x, [0, 1])


def test_decoded_arrays_do_not_share_the_request_buffer() -> None:
    x = images(1, "uint8")
    body, _ = encode_raw_batch(x)
    batch = decode_raw(body, "uint8", "1,3,32,32", "0")
    batch.x[...] = 0  # writable, and the bytes object is untouched
    assert body == x.tobytes()


# --- JSON validation errors ------------------------------------------------------------------

JSON_ERRORS: list[tuple[str, Callable[[], dict[str, Any]], str, str]] = [
    (
        "shape differs from the model",
        lambda: json_body(1, shape=[64, 3, 28, 28]),
        "shape [64, 3, 28, 28] does not match the model input (3, 32, 32): expected [N, 3, 32, 32]",
        "shape",
    ),
    (
        "shape without N",
        lambda: json_body(1, shape=[3, 32, 32]),
        "shape [3, 32, 32] does not match the model input (3, 32, 32): expected [N, 3, 32, 32]",
        "shape",
    ),
    (
        "more labels than samples",
        lambda: json_body(63, labels=labels_for(64)),
        "labels: 64 labels for 63 samples",
        "labels",
    ),
    (
        "one label for two samples",
        lambda: json_body(2, labels=[1]),
        "labels: 1 label for 2 samples",
        "labels",
    ),
    (
        "label out of range",
        lambda: json_body(8, labels=[0, 1, 2, 3, 4, 12, 6, 7]),
        "label 12 at index 5 is out of range 0..9",
        "labels",
    ),
    (
        "negative label",
        lambda: json_body(2, labels=[0, -1]),
        "label -1 at index 1 is out of range 0..9",
        "labels",
    ),
    (
        "huge label",
        lambda: json_body(1, labels=[10**30]),
        f"label {10**30} at index 0 is out of range 0..9",
        "labels",
    ),
    (
        "fractional label",
        lambda: json_body(3, labels=[0, 1, 1.5]),
        "labels: label at index 2 is 1.5, not an integer",
        "labels",
    ),
    (
        "float label",
        lambda: json_body(1, labels=[1.0]),
        "labels: label at index 0 is 1.0, not an integer",
        "labels",
    ),
    (
        "boolean label",
        lambda: json_body(2, labels=[1, True]),
        "labels: label at index 1 is true, not an integer",
        "labels",
    ),
    (
        "string label",
        lambda: json_body(1, labels=["3"]),
        'labels: label at index 0 is "3", not an integer',
        "labels",
    ),
    (
        "labels not a list",
        lambda: json_body(1, labels="0"),
        "labels: expected a list of integers, got a string",
        "labels",
    ),
    (
        "labels missing",
        lambda: json_body(1, labels=...),
        "labels: missing; send one integer label per sample",
        "labels",
    ),
    (
        "not base64",
        lambda: json_body(1, data="not base64!"),
        "data: not valid base64 (standard alphabet, '=' padding): ",
        "data",
    ),
    (
        "base64 without padding",
        lambda: json_body(1, data=b64(bytes(3071)).rstrip("=")),
        "data: not valid base64 (standard alphabet, '=' padding): ",
        "data",
    ),
    (
        "non-ASCII data",
        lambda: json_body(1, data="AAAA\u00e9"),
        "data: not valid base64 (standard alphabet, '=' padding): ",
        "data",
    ),
    (
        "data not a string",
        lambda: json_body(1, data=[1, 2, 3]),
        "data: expected a base64 string, got a list",
        "data",
    ),
    (
        "one byte short",
        lambda: json_body(1, data=b64(bytes(3071))),
        "data: 3071 bytes do not fill shape [1, 3, 32, 32] of uint8 (3072 bytes)",
        "data",
    ),
    (
        "one byte too many",
        lambda: json_body(1, data=b64(bytes(3073))),
        "data: 3073 bytes overflow shape [1, 3, 32, 32] of uint8 (3072 bytes)",
        "data",
    ),
    (
        "float32 data sized as uint8",
        lambda: json_body(1, "float32", data=b64(bytes(3072))),
        "data: 3072 bytes do not fill shape [1, 3, 32, 32] of float32 (12288 bytes)",
        "data",
    ),
    (
        "NaN and infinities",
        lambda: json_body(
            1,
            "float32",
            data=b64(np.array([np.nan, np.inf, -np.inf] + [0.5] * 3069, "<f4").tobytes()),
        ),
        "float32 samples must be finite: 3 NaN or infinite values",
        "data",
    ),
    (
        "float32 outside [0, 1]",
        lambda: json_body(
            1, "float32", data=b64(np.array([-0.5, 255.0] + [0.5] * 3070, "<f4").tobytes())
        ),
        "float32 values must lie in [0, 1], the range the model takes (send uint8 for 0..255): "
        "2 values outside (min -0.5, max 255)",
        "data",
    ),
    (
        "batch too large (checked before the data is decoded)",
        lambda: json_body(1, shape=[5000, 3, 32, 32], data="never decoded", labels=[]),
        "batch of 5000 samples exceeds the limit of 1024",
        "shape",
    ),
    (
        "empty batch",
        lambda: json_body(1, shape=[0, 3, 32, 32], data="", labels=[]),
        "empty batch: send at least one sample",
        "shape",
    ),
    (
        "unsupported dtype",
        lambda: json_body(1, dtype="int16"),
        'dtype: "int16" is not supported; send uint8 or float32',
        "dtype",
    ),
    (
        "float64",
        lambda: json_body(1, dtype="float64"),
        'dtype: "float64" is not supported; send uint8 or float32',
        "dtype",
    ),
    (
        "dtype not a string",
        lambda: json_body(1, dtype=8),
        "dtype: 8 is not supported; send uint8 or float32",
        "dtype",
    ),
    (
        "dtype missing",
        lambda: json_body(1, dtype=...),
        "dtype: missing; base64 data needs dtype uint8 or float32",
        "dtype",
    ),
    (
        "shape missing",
        lambda: json_body(1, shape=...),
        "shape: missing; base64 data needs shape [N, C, H, W]",
        "shape",
    ),
    (
        "shape of floats",
        lambda: json_body(1, shape=[1, 3, 32.0, 32]),
        "shape: expected a list of integers [N, C, H, W], got [1, 3, 32.0, 32]",
        "shape",
    ),
    (
        "shape as a string",
        lambda: json_body(1, shape="1,3,32,32"),
        'shape: expected a list of integers [N, C, H, W], got "1,3,32,32"',
        "shape",
    ),
    (
        "negative dimension",
        lambda: json_body(1, shape=[-1, 3, 32, 32]),
        "shape [-1, 3, 32, 32] has a negative dimension",
        "shape",
    ),
    (
        "context too long",
        lambda: json_body(1, context="c" * 65),
        "context: must be 1 to 64 characters from A-Z a-z 0-9 . _ : -; got 65 characters",
        "context",
    ),
    (
        "empty context",
        lambda: json_body(1, context=""),
        "context: must be 1 to 64 characters from A-Z a-z 0-9 . _ : -; got 0 characters",
        "context",
    ),
    (
        "space in context",
        lambda: json_body(1, context="night shift"),
        "context: character ' ' at position 5 is not allowed; use 1 to 64 characters from "
        "A-Z a-z 0-9 . _ : -",
        "context",
    ),
    (
        "slash in context",
        lambda: json_body(1, context="../etc"),
        "context: character '/' at position 2 is not allowed; use 1 to 64 characters from "
        "A-Z a-z 0-9 . _ : -",
        "context",
    ),
    (
        "non-ASCII letter in device_id",
        lambda: json_body(1, device_id="capteur-\u00e9"),
        "device_id: character '\u00e9' at position 8 is not allowed; use 1 to 64 characters "
        "from A-Z a-z 0-9 . _ : -",
        "device_id",
    ),
    (
        "device_id not a string",
        lambda: json_body(1, device_id=7),
        "device_id: expected a string, got an integer",
        "device_id",
    ),
    (
        "device_id too long",
        lambda: json_body(1, device_id="d" * 100),
        "device_id: must be 1 to 64 characters from A-Z a-z 0-9 . _ : -; got 100 characters",
        "device_id",
    ),
    (
        "both data and samples",
        lambda: json_body(1, samples=[]),
        "body: send either data (base64) or samples (nested lists), not both",
        "body",
    ),
    (
        "neither data nor samples",
        lambda: json_body(1, data=...),
        "body: missing data (base64 with dtype and shape) or samples (nested lists)",
        "body",
    ),
    (
        "unknown field",
        lambda: json_body(1, lables=[0]),
        'body: unknown field "lables"; expected some of dtype, shape, data, samples, labels, '
        "context, device_id",
        "body",
    ),
    (
        "not an object",
        lambda: [1, 2, 3],  # type: ignore[return-value,list-item]
        "body: expected a JSON object, got a list",
        "body",
    ),
]


@pytest.mark.parametrize(
    ("body", "message", "field"),
    [pytest.param(body, message, field, id=name) for name, body, message, field in JSON_ERRORS],
)
def test_json_batch_errors(body: Callable[[], Any], message: str, field: str) -> None:
    caught = error(lambda: decode_json(body()))
    if message.endswith(": "):  # the rest is the base64 decoder's own detail
        assert caught.message.startswith(message)
    else:
        assert caught.message == message
    assert caught.field == field
    assert str(caught) == caught.message
    assert caught.to_dict() == {"error": caught.message, "field": field}


def test_shape_error_uses_the_given_model_shape() -> None:
    body = json_body(1)  # 3×32×32
    caught = error(lambda: decode_json_batch(body, (1, 28, 28), CLASSES, LIMIT))
    assert caught.message == (
        "shape [1, 3, 32, 32] does not match the model input (1, 28, 28): expected [N, 1, 28, 28]"
    )


def test_batch_at_the_limit_is_accepted() -> None:
    body = encode_json_batch(images(4, "uint8", SMALL), labels_for(4))
    assert len(decode_json_batch(body, SMALL, CLASSES, 4)) == 4
    caught = error(lambda: decode_json_batch(body, SMALL, CLASSES, 3))
    assert caught.message == "batch of 4 samples exceeds the limit of 3"


def test_last_class_is_in_range() -> None:
    assert decode_json(json_body(1, labels=[9])).labels.tolist() == [9]


def test_identifier_characters_all_allowed() -> None:
    name = "Az09._:-" * 8  # 64 characters, every class of allowed character
    batch = decode_json(json_body(1, context=name, device_id=name))
    assert batch.context == batch.device_id == name


# --- nested-list validation errors -----------------------------------------------------------

NESTED_ERRORS: list[tuple[str, Callable[[], dict[str, Any]], str, str]] = [
    (
        "ragged rows",
        lambda: nested_body([[[[0, 1], [0]]]]),
        "samples: samples[0][0][1] has 1 items, expected 2 values "
        "(samples must be nested lists [1, 1, 2, 2])",
        "samples",
    ),
    (
        "a number where a channel list belongs",
        lambda: nested_body([[[[0, 1], [0, 1]]], [5]]),
        "samples: samples[1][0] is 5, expected a list of 2 rows",
        "samples",
    ),
    (
        "consistent but the wrong layout (H, W, C)",
        lambda: nested_body([[[[0], [0]], [[0], [0]]]]),
        "shape [1, 2, 2, 1] does not match the model input (1, 2, 2): expected [N, 1, 2, 2]",
        "samples",
    ),
    (
        "strings",
        lambda: nested_body([[[["0", "1"], ["0", "1"]]]]),
        "samples: values must be numbers; found strings, null or integers out of range",
        "samples",
    ),
    (
        "null",
        lambda: nested_body([[[[None, 1], [0, 1]]]]),
        "samples: values must be numbers; found strings, null or integers out of range",
        "samples",
    ),
    (
        "all booleans",
        lambda: nested_body([[[[True, False], [False, True]]]]),
        "samples: values must be numbers, not true/false",
        "samples",
    ),
    (
        "a boolean among numbers",
        lambda: nested_body([[[[1, 0], [True, 1]]]]),
        "samples: values must be numbers, not true/false",
        "samples",
    ),
    (
        "integer above 255",
        lambda: nested_body([[[[0, 256], [0, 1]]]]),
        "uint8 values must lie in 0..255: 1 value outside (min 0, max 256)",
        "samples",
    ),
    (
        "negative integers",
        lambda: nested_body([[[[-1, -2], [0, 1]]]]),
        "uint8 values must lie in 0..255: 2 values outside (min -2, max 1)",
        "samples",
    ),
    (
        "fraction with dtype uint8",
        lambda: nested_body([[[[0.0, 1.5], [0.0, 1.0]]]], dtype="uint8"),
        "uint8 values must be whole numbers: 1 value is not (the first is 1.5)",
        "samples",
    ),
    (
        "0..255 floats without dtype",
        lambda: nested_body([[[[0.5, 255], [0, 1]]]]),
        "float32 values must lie in [0, 1], the range the model takes (send uint8 for 0..255): "
        "1 value outside (min 0, max 255)",
        "samples",
    ),
    (
        "NaN",
        lambda: nested_body([[[[float("nan"), 0.5], [0.5, float("inf")]]]]),
        "float32 samples must be finite: 2 NaN or infinite values",
        "samples",
    ),
    (
        "too large for float32",
        lambda: nested_body([[[[1e300, 0.5], [0.5, 0.5]]]], dtype="float32"),
        "float32 values must lie in [0, 1], the range the model takes (send uint8 for 0..255): "
        "1 value outside (min 0.5, max 1e+300)",
        "samples",
    ),
    (
        "unsupported dtype",
        lambda: nested_body([[[[0, 1], [0, 1]]]], dtype="int8"),
        'dtype: "int8" is not supported; send uint8 or float32',
        "dtype",
    ),
    (
        "declared shape differs",
        lambda: nested_body([[[[0, 1], [0, 1]]]], shape=[2, 1, 2, 2]),
        "shape [2, 1, 2, 2] does not match the samples, which are [1, 1, 2, 2]",
        "shape",
    ),
    (
        "empty",
        lambda: nested_body([]),
        "empty batch: send at least one sample",
        "samples",
    ),
    (
        "not a list",
        lambda: nested_body({"a": 1}, labels=[0]),
        "samples: expected nested lists N×C×H×W, got an object",
        "samples",
    ),
    (
        "too many samples (checked before the lists are read)",
        lambda: nested_body(["x"] * 5000, labels=[]),
        "batch of 5000 samples exceeds the limit of 1024",
        "samples",
    ),
    (
        "labels short",
        lambda: nested_body([[[[0, 1], [0, 1]]]] * 3, labels=[0, 1]),
        "labels: 2 labels for 3 samples",
        "labels",
    ),
]


@pytest.mark.parametrize(
    ("body", "message", "field"),
    [pytest.param(body, message, field, id=name) for name, body, message, field in NESTED_ERRORS],
)
def test_nested_list_errors(body: Callable[[], Any], message: str, field: str) -> None:
    caught = error(lambda: decode_json(body(), (1, 2, 2)))
    assert (caught.message, caught.field) == (message, field)


# --- raw and .npy validation errors ----------------------------------------------------------

RAW = encode_raw_batch(images(2, "uint8"))[0]


@pytest.mark.parametrize(
    ("args", "kwargs", "message", "field"),
    [
        pytest.param(
            (RAW, None, "2,3,32,32", "0,1"), {},
            "dtype: missing; send uint8 or float32", "dtype", id="dtype missing",
        ),
        pytest.param(
            (RAW, "u1", "2,3,32,32", "0,1"), {},
            'dtype: "u1" is not supported; send uint8 or float32', "dtype", id="dtype alias",
        ),
        pytest.param(
            (RAW, "uint8", None, "0,1"), {},
            "shape: missing; send N,C,H,W", "shape", id="shape missing",
        ),
        pytest.param(
            (RAW, "uint8", "2x3x32x32", "0,1"), {},
            'shape: "2x3x32x32" is not a comma-separated list of integers N,C,H,W', "shape",
            id="shape with x",
        ),
        pytest.param(
            (RAW, "uint8", (2, 3, 32.5, 32), "0,1"), {},
            "shape: expected integers N,C,H,W, got [2, 3, 32.5, 32]", "shape",
            id="shape sequence of floats",
        ),
        pytest.param(
            (RAW, "uint8", "2,3,28,28", "0,1"), {},
            "shape [2, 3, 28, 28] does not match the model input (3, 32, 32): "
            "expected [N, 3, 32, 32]",
            "shape", id="shape differs",
        ),
        pytest.param(
            (b"", "uint8", "5000,3,32,32", ""), {},
            "batch of 5000 samples exceeds the limit of 1024", "shape", id="batch too large",
        ),
        pytest.param(
            (b"", "uint8", "0,3,32,32", ""), {},
            "empty batch: send at least one sample", "shape", id="empty batch",
        ),
        pytest.param(
            (RAW, "uint8", "2,3,32,32", None), {},
            "labels: missing; send one integer per sample, comma-separated (3,1,4)", "labels",
            id="labels missing",
        ),
        pytest.param(
            (RAW, "uint8", "2,3,32,32", ""), {},
            "labels: 0 labels for 2 samples", "labels", id="labels empty",
        ),
        pytest.param(
            (RAW, "uint8", "2,3,32,32", "0,1.5"), {},
            'labels: label at index 1 is "1.5", not an integer', "labels", id="fractional label",
        ),
        pytest.param(
            (RAW, "uint8", "2,3,32,32", "0,,1"), {},
            "labels: empty label at index 1", "labels", id="empty label",
        ),
        pytest.param(
            (RAW, "uint8", "2,3,32,32", "0,1_0"), {},
            'labels: label at index 1 is "1_0", not an integer', "labels", id="underscore",
        ),
        pytest.param(
            (RAW, "uint8", "2,3,32,32", [0, True]), {},
            "labels: label at index 1 is true, not an integer", "labels", id="boolean label",
        ),
        pytest.param(
            (RAW, "uint8", "2,3,32,32", "0,1,2"), {},
            "labels: 3 labels for 2 samples", "labels", id="label count",
        ),
        pytest.param(
            (RAW, "uint8", "2,3,32,32", "0,10"), {},
            "label 10 at index 1 is out of range 0..9", "labels", id="label range",
        ),
        pytest.param(
            (RAW[:-1], "uint8", "2,3,32,32", "0,1"), {},
            "body: 6143 bytes do not fill shape [2, 3, 32, 32] of uint8 (6144 bytes)", "body",
            id="one byte short",
        ),
        pytest.param(
            (RAW + b"\0", "uint8", "2,3,32,32", "0,1"), {},
            "body: 6145 bytes overflow shape [2, 3, 32, 32] of uint8 (6144 bytes)", "body",
            id="one byte too many",
        ),
        pytest.param(
            (np.full(2 * 3072, np.nan, "<f4").tobytes(), "float32", "2,3,32,32", "0,1"), {},
            "float32 samples must be finite: 6144 NaN or infinite values", "body", id="NaN",
        ),
        pytest.param(
            (np.full(2 * 3072, 2.0, "<f4").tobytes(), "float32", "2,3,32,32", "0,1"), {},
            "float32 values must lie in [0, 1], the range the model takes (send uint8 for "
            "0..255): 6144 values outside (min 2, max 2)",
            "body", id="float range",
        ),
        pytest.param(
            (RAW, "uint8", "2,3,32,32", "0,1"), {"context": "a b"},
            "context: character ' ' at position 1 is not allowed; use 1 to 64 characters from "
            "A-Z a-z 0-9 . _ : -",
            "context", id="context",
        ),
        pytest.param(
            (RAW, "uint8", "2,3,32,32", "0,1"), {"device_id": ""},
            "device_id: must be 1 to 64 characters from A-Z a-z 0-9 . _ : -; got 0 characters",
            "device_id", id="device_id",
        ),
    ],
)  # fmt: skip
def test_raw_batch_errors(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str, field: str
) -> None:
    caught = error(lambda: decode_raw(*args, **kwargs))
    assert (caught.message, caught.field) == (message, field)


def npy_with_header(shape: tuple[int, ...], descr: str, data: bytes) -> bytes:
    """A .npy file whose header says what the test wants, whatever follows it."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


U8 = images(2, "uint8")


@pytest.mark.parametrize(
    ("body", "labels", "message", "field"),
    [
        pytest.param(
            b"\x00\x01 not numpy", "0,1",
            "body: not a .npy file (it must start with \\x93NUMPY; .npz and pickles are refused)",
            "body", id="garbage",
        ),
        pytest.param(
            b"PK\x03\x04" + bytes(40), "0,1",
            "body: not a .npy file (it must start with \\x93NUMPY; .npz and pickles are refused)",
            "body", id="npz",
        ),
        pytest.param(
            b"\x93NUMPY\x01\x00\x10\x00{'descr':", "0,1",
            "body: not a valid .npy header: ", "body", id="truncated header",
        ),
        pytest.param(
            npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True), "0,1",
            "dtype: the .npy array holds Python objects (object); send a uint8 or float32 array",
            "dtype", id="object array",
        ),
        pytest.param(
            npy_bytes(U8.astype(np.float64) / 255), "0,1",
            "dtype: a .npy array of float64 is not supported; send uint8 or float32 "
            "(x.astype(np.float32))",
            "dtype", id="float64",
        ),
        pytest.param(
            npy_bytes(np.zeros(2, dtype=[("x", "<f4"), ("y", "u1")])), "0,1",
            "dtype: a .npy array of a structured dtype is not supported; send uint8 or float32 "
            "(x.astype(np.float32))",
            "dtype", id="structured",
        ),
        pytest.param(
            npy_bytes(U8[0]), "0",
            "shape [3, 32, 32] does not match the model input (3, 32, 32): "
            "expected [N, 3, 32, 32]",
            "shape", id="one sample without N",
        ),
        pytest.param(
            npy_with_header((10**9, 3, 32, 32), "|u1", b""), "0",
            "batch of 1000000000 samples exceeds the limit of 1024", "shape",
            id="huge header, tiny file",
        ),
        pytest.param(
            npy_bytes(U8)[:-1], "0,1",
            "body: 6143 bytes of .npy data do not fill shape [2, 3, 32, 32] of uint8 "
            "(6144 bytes)",
            "body", id="truncated data",
        ),
        pytest.param(
            npy_bytes(U8) + b"extra", "0,1",
            "body: 6149 bytes of .npy data overflow shape [2, 3, 32, 32] of uint8 (6144 bytes)",
            "body", id="trailing bytes",
        ),
        pytest.param(
            npy_bytes(np.full((1, 3, 32, 32), np.inf, ">f4")), "0",
            "float32 samples must be finite: 3072 NaN or infinite values", "body",
            id="infinite big-endian",
        ),
        pytest.param(
            npy_bytes(U8), "0",
            "labels: 1 label for 2 samples", "labels", id="label count",
        ),
        pytest.param(
            npy_bytes(U8), "0,x",
            'labels: label at index 1 is "x", not an integer', "labels", id="label text",
        ),
    ],
)  # fmt: skip
def test_npy_batch_errors(body: bytes, labels: Any, message: str, field: str) -> None:
    caught = error(lambda: decode_npy(body, labels))
    if message.endswith(": "):
        assert caught.message.startswith(message)
    else:
        assert caught.message == message
    assert caught.field == field


# --- encoders --------------------------------------------------------------------------------


def test_encoders_refuse_what_the_decoders_would() -> None:
    x64 = images(1, "float32").astype(np.float64)
    assert error(lambda: encode_json_batch(x64, [0])).message == (
        "dtype: float64 is not supported; send uint8 or float32"
    )
    assert error(lambda: encode_raw_batch(images(1, "uint8")[0])).message == (
        "shape [3, 32, 32] is not a batch: expected [N, C, H, W]"
    )
    assert error(lambda: encode_json_batch(images(2, "uint8"), [0])).message == (
        "labels: 1 label for 2 samples"
    )
    assert error(lambda: encode_json_batch(images(1, "uint8"), [0.5])).message == (
        "labels: expected integers, got float64"
    )
    assert error(lambda: encode_raw_batch(images(1, "uint8"), [0], context="a/b")).field == (
        "context"
    )


def test_encoders_accept_numpy_labels_and_non_contiguous_arrays() -> None:
    x = images(4, "uint8")[::2]  # a strided view
    body = encode_json_batch(x, np.array([3, 4], dtype=np.int32))
    assert body["labels"] == [3, 4] and all(type(v) is int for v in body["labels"])
    assert_well_formed(decode_json(body), x, [3, 4])
    raw, params = encode_raw_batch(x)
    assert params == {"dtype": "uint8", "shape": "2,3,32,32"}
    assert_well_formed(decode_raw(raw, params["dtype"], params["shape"], [3, 4]), x, [3, 4])
    assert_well_formed(decode_npy(encode_npy_batch(x), "3,4"), x, [3, 4])


def test_module_imports_no_web_framework_or_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, service.payloads, service.body_limit; "
        "bad = [m for m in ('torch', 'fastapi', 'starlette') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


# --- decode_samples: by media type, with parameters from the query or headers ----------------


def by_type(
    body: bytes, content_type: str | None, labelled: bool = True, **params: str
) -> SampleBatch:
    return decode_samples(
        body, content_type=content_type, params=params, input_shape=MODEL,
        num_classes=CLASSES, max_batch=LIMIT, labelled=labelled,
    )  # fmt: skip


def test_decode_samples_picks_the_form_by_media_type() -> None:
    x = images(2, "uint8")
    as_json = json.dumps(encode_json_batch(x, [1, 2])).encode()
    json_types = ("application/json", "Application/JSON; charset=utf-8", "application/vnd.x+json")
    for media_type in json_types:
        assert_well_formed(by_type(as_json, media_type), x, [1, 2])
    raw, params = encode_raw_batch(x, [1, 2], context="q")
    batch = by_type(raw, "application/octet-stream", **params)
    assert_well_formed(batch, x, [1, 2])
    assert batch.context == "q"
    for media_type in ("application/x-npy", "application/npy"):
        batch = by_type(encode_npy_batch(x), media_type, labels="1,2", device_id="d1")
        assert_well_formed(batch, x, [1, 2])
        assert batch.device_id == "d1"


def test_decode_samples_reads_x_headers_and_prefers_the_query() -> None:
    x = images(1, "float32")
    raw, _ = encode_raw_batch(x)
    headers = {
        "X-Dtype": "float32", "X-Shape": "1,3,32,32", "X-Labels": "4", "X-Context": "hdr",
        "X-Device-Id": "dev-h",
    }  # fmt: skip
    batch = by_type(raw, "application/octet-stream", **headers)
    assert_well_formed(batch, x, [4])
    assert (batch.context, batch.device_id) == ("hdr", "dev-h")
    batch = by_type(raw, "application/octet-stream", **headers, labels="5", context="query")
    assert batch.labels is not None and batch.labels.tolist() == [5]
    assert batch.context == "query"


def test_json_fields_win_over_parameters() -> None:
    body = json.dumps(encode_json_batch(images(1, "uint8"), [0], context="inside")).encode()
    batch = by_type(body, "application/json", context="query", device_id="from-query")
    assert (batch.context, batch.device_id) == ("inside", "from-query")


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"{not json", "application/json", 400, "body: not valid JSON: Expecting property name"),
        (b"\xff\xfe", "application/json", 400, "body: not valid JSON: "),
        (b"[1]", "application/json", 422, "body: expected a JSON object, got a list"),
        (
            b"x", "text/plain", 415,
            "unsupported content type 'text/plain'; send application/json, "
            "application/octet-stream or application/x-npy",
        ),
        (
            b"x", None, 415,
            "missing content type; send application/json, application/octet-stream or "
            "application/x-npy",
        ),
    ],
)  # fmt: skip
def test_decode_samples_statuses(
    body: bytes, content_type: str | None, status: int, message: str
) -> None:
    caught = error(lambda: by_type(body, content_type))
    assert caught.status == status
    assert caught.message.startswith(message)


def test_unlabelled_batches_for_predict() -> None:
    x = images(3, "uint8")
    body = encode_json_batch(x, None)
    assert "labels" not in body
    batch = decode_json_batch(body, MODEL, CLASSES, LIMIT, labelled=False)
    assert batch.labels is None and batch.x.shape == x.shape
    raw, params = encode_raw_batch(x)
    assert by_type(raw, "application/octet-stream", labelled=False, **params).labels is None
    assert by_type(encode_npy_batch(x), "application/x-npy", labelled=False).labels is None
    # Labels given anyway are still checked.
    with_labels = {**body, "labels": [0]}
    caught = error(lambda: decode_json_batch(with_labels, MODEL, CLASSES, LIMIT, labelled=False))
    assert caught.message == "labels: 1 label for 3 samples"
    # And a labelled decode still requires them.
    assert error(lambda: decode_json(body)).message == (
        "labels: missing; send one integer label per sample"
    )
    assert error(lambda: by_type(raw, "application/octet-stream", **params)).field == "labels"


def test_payload_error_status_defaults_to_422() -> None:
    assert error(lambda: decode_json(json_body(1, dtype="int16"))).status == 422
