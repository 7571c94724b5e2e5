"""The UM frame codec: exact decoding per model from frames built at the documented offsets,
integrity checks, and resynchronisation in a byte stream."""

from __future__ import annotations

import pytest

from energy.um import (
    FRAME_LENGTH,
    UM24C,
    UM25C,
    UM34C,
    FrameError,
    UMFrame,
    UMGroup,
    decode_frame,
    encode_frame,
    extract_frame,
    model_named,
    um34c_checksum,
)
from tests.energy_helpers import pack_frame

FULL = {
    "celsius": 31,
    "fahrenheit": 88,
    "group": 3,
    "groups": {0: (12, 61), 3: (1234, 6543), 9: (4_000_000_000, 4_294_967_295)},
    "dplus_raw": 60,
    "dminus_raw": 59,
    "charging_mode": 7,
    "record_mah": 77,
    "record_mwh": 390,
    "threshold_raw": 15,
    "record_seconds": 86_400,
    "recording": 1,
    "screen_timeout": 2,
    "brightness": 4,
    "load_raw": 51_234,
    "screen": 5,
}


def _check_common(frame: UMFrame) -> None:
    assert frame.celsius == 31 and frame.fahrenheit == 88
    assert frame.group == 3
    assert frame.groups[0] == UMGroup(12, 61)
    assert frame.groups[3] == UMGroup(1234, 6543)
    assert frame.groups[9] == UMGroup(4_000_000_000, 4_294_967_295)
    assert frame.groups[5] == UMGroup(0, 0)
    assert frame.counter_milliwatt_hours == 6543 and frame.counter_milliamp_hours == 1234
    assert frame.data_plus_volts == 0.60 and frame.data_minus_volts == 0.59
    assert frame.charging_mode == 7
    assert frame.record_milliamp_hours == 77 and frame.record_milliwatt_hours == 390
    assert frame.record_threshold_amps == 0.15
    assert frame.record_seconds == 86_400 and frame.recording is True
    assert frame.screen_timeout_minutes == 2 and frame.brightness == 4
    assert frame.load_ohms == 5123.4
    assert frame.screen == 5


def test_um24c_decodes_exactly() -> None:
    # UM24C: volts ÷100, amps ÷1000, watts ÷1000.
    data = pack_frame(0x0963, volts_raw=512, amps_raw=800, watts_raw=4096, **FULL)
    frame = decode_frame(data)
    assert frame.model == "UM24C"
    assert (frame.volts, frame.amps, frame.watts) == (5.12, 0.8, 4.096)
    _check_common(frame)


def test_um25c_decodes_exactly() -> None:
    # UM25C: volts ÷1000, amps ÷10000; power is not scaled by model.
    data = pack_frame(0x09C9, volts_raw=5123, amps_raw=8765, watts_raw=4490, **FULL)
    frame = decode_frame(data)
    assert frame.model == "UM25C"
    assert (frame.volts, frame.amps, frame.watts) == (5.123, 0.8765, 4.49)
    _check_common(frame)


def test_um34c_decodes_exactly() -> None:
    # UM34C: scaled as the UM24C, with a checksum in byte 129 instead of the end marker.
    data = pack_frame(0x0D4C, volts_raw=1234, amps_raw=1500, watts_raw=18_510, **FULL)
    frame = decode_frame(data)
    assert frame.model == "UM34C"
    assert (frame.volts, frame.amps, frame.watts) == (12.34, 1.5, 18.51)
    _check_common(frame)


@pytest.mark.parametrize("model_id", [0x0963, 0x09C9, 0x0D4C])
def test_encoder_matches_the_documented_layout(model_id: int) -> None:
    built = pack_frame(model_id, volts_raw=500, amps_raw=1000, watts_raw=5000, **FULL)
    assert encode_frame(decode_frame(built)) == built


def test_encoder_rounds_to_model_resolution() -> None:
    frame = UMFrame(model="UM24C", volts=5.1234, amps=0.98765, watts=5.06)
    decoded = decode_frame(encode_frame(frame))
    assert (decoded.volts, decoded.amps, decoded.watts) == (5.12, 0.988, 5.06)
    with pytest.raises(ValueError, match="voltage"):
        encode_frame(UMFrame(model="UM25C", volts=70.0, amps=0.0, watts=0.0))  # > 65.535 V


def test_models_by_name_and_resolution() -> None:
    assert model_named("um25c") is UM25C and model_named(" UM34C ") is UM34C
    assert UM24C.volts_resolution == 0.01 and UM25C.amps_resolution == 0.0001
    with pytest.raises(ValueError, match="known: um24c"):
        model_named("tc66c")


def test_um34c_checksum_is_xor_of_listed_bytes() -> None:
    data = bytearray(pack_frame(0x0D4C, volts_raw=0x1234, amps_raw=0x0056, watts_raw=0x789A))
    # Non-zero bytes: 1 (id 0x4C), 3 (volts 0x34), 5 (amps 0x56), 8 and 9 (watts 0x78, 0x9A).
    # Of those the checksum covers 1, 3 and 9 only.
    assert um34c_checksum(data) == 0x4C ^ 0x34 ^ 0x9A
    assert data[129] == um34c_checksum(data)
    data[129] ^= 0x01
    with pytest.raises(FrameError, match="checksum"):
        decode_frame(bytes(data))


def test_wrong_end_marker_and_unknown_id_are_refused() -> None:
    data = bytearray(pack_frame(0x09C9, volts_raw=5000, amps_raw=1000, watts_raw=500))
    data[129] = 0xF2
    with pytest.raises(FrameError, match="end marker"):
        decode_frame(bytes(data))
    with pytest.raises(FrameError, match="model id"):
        decode_frame(b"\x12\x34" + bytes(128))
    with pytest.raises(FrameError, match="130 bytes"):
        decode_frame(bytes(data[:100]))


@pytest.mark.parametrize("model_id", [0x0963, 0x09C9, 0x0D4C])
def test_extract_frame_skips_garbage_including_a_fake_model_id(model_id: int) -> None:
    frame = pack_frame(model_id, volts_raw=500, amps_raw=200, watts_raw=1000, group=1)
    garbage = b"\x00\xff" + bytes([model_id >> 8, model_id & 0xFF]) + b"\x13\x37" * 20
    found, consumed = extract_frame(garbage + frame + b"\x09")
    assert found is not None and found.model == decode_frame(frame).model
    assert found.group == 1
    assert consumed == len(garbage) + FRAME_LENGTH


@pytest.mark.parametrize("model_id", [0x0963, 0x09C9, 0x0D4C])
def test_extract_frame_after_a_short_frame_is_not_shifted(model_id: int) -> None:
    stale = pack_frame(model_id, volts_raw=111, amps_raw=222, watts_raw=333)
    fresh = pack_frame(model_id, volts_raw=500, amps_raw=200, watts_raw=1000)
    found, consumed = extract_frame(stale[:60] + fresh)
    assert found == decode_frame(fresh)
    assert consumed == 60 + FRAME_LENGTH


def test_extract_frame_waits_for_the_rest_of_a_frame() -> None:
    frame = pack_frame(0x09C9, volts_raw=500, amps_raw=200, watts_raw=1000)
    found, consumed = extract_frame(b"\x00\x01" + frame[:70])
    assert found is None and consumed == 2  # drop the garbage, keep the partial frame
    found, consumed = extract_frame(b"\x00\x01\x02")
    assert found is None and consumed == 2  # the last byte may begin a model id
