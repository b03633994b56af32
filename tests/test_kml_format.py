"""The KML model file: layout, and refusal of every malformed file."""

from __future__ import annotations

import errno
import struct
import zlib

import numpy as np
import pytest

from kmlbench.kml.ffi import KmlError, lib
from kmlbench.kml.model import Model

HDR = 64


def model_bytes(dtype="float32", normalize=True) -> bytes:
    m = Model.mlp(8, hidden=[16], activation="relu", output="sigmoid",
                      dtype=dtype, normalize=normalize, seed=4)  # fmt: skip
    if normalize:
        m.norm_update(np.random.default_rng(0).normal(size=(100, 8)))
    return m.to_bytes()


def with_crc(body: bytes) -> bytes:
    """Replace the trailing CRC so that only the deliberate defect remains."""
    return body[:-4] + struct.pack("<I", zlib.crc32(body[:-4]))


def errno_of(data: bytes) -> int:
    with pytest.raises(KmlError) as exc:
        Model.from_bytes(data)
    return exc.value.errno


def test_layout_and_crc_is_zlib_crc32():
    data = model_bytes()
    magic, version, hdr, flags, dtype, arch, n_layers, hid, out, norm = struct.unpack_from(
        "<10I", data
    )
    sizes = struct.unpack_from("<5I", data, 40)
    (payload,) = struct.unpack_from("<I", data, 60)
    assert magic == 0x4D4C4D4B and data[:4] == b"KMLM"
    assert (version, hdr, flags, dtype, arch, n_layers) == (1, 64, 0, 0, 2, 2)
    assert (hid, out, norm) == (1, 2, 1)
    assert sizes == (8, 16, 1, 0, 0)
    n_params = 16 * 9 + 17
    assert payload == 8 + 12 * 8 + 4 * n_params
    assert len(data) == HDR + payload + 4
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    assert lib().kml_crc32(0, b"123456789", 9) == 0xCBF43926


def test_valid_files_load():
    for dtype in ("float32", "fixed"):
        for normalize in (False, True):
            data = model_bytes(dtype, normalize)
            assert Model.from_bytes(data).to_bytes() == data


def test_bad_magic():
    data = bytearray(model_bytes())
    data[0:4] = b"KMLX"
    assert errno_of(with_crc(bytes(data))) == errno.EINVAL


def test_bad_version():
    data = bytearray(model_bytes())
    struct.pack_into("<I", data, 4, 2)
    assert errno_of(with_crc(bytes(data))) == errno.EPROTONOSUPPORT


@pytest.mark.parametrize("offset,value", [(8, 32), (12, 1), (16, 7), (20, 9), (28, 9), (36, 5)])
def test_bad_header_fields(offset, value):
    data = bytearray(model_bytes())
    struct.pack_into("<I", data, offset, value)
    assert errno_of(with_crc(bytes(data))) == errno.EINVAL


def test_truncated_at_many_offsets():
    data = model_bytes()
    for cut in [0, 1, 4, 30, 63, 64, 67, 68, 100, len(data) // 2, len(data) - 5, len(data) - 1]:
        assert errno_of(data[:cut]) == errno.EBADMSG, cut


def test_trailing_bytes():
    data = model_bytes()
    assert errno_of(data + b"\0") == errno.EBADMSG


def test_size_mismatch():
    data = bytearray(model_bytes())
    struct.pack_into("<I", data, 44, 15)  # hidden width no longer matches the payload
    assert errno_of(with_crc(bytes(data))) == errno.EINVAL
    data = bytearray(model_bytes())
    struct.pack_into("<I", data, 60, struct.unpack_from("<I", data, 60)[0] + 4)
    assert errno_of(with_crc(bytes(data))) == errno.EINVAL


def test_too_big():
    data = bytearray(model_bytes())
    struct.pack_into("<I", data, 44, 100000)
    assert errno_of(with_crc(bytes(data))) == errno.E2BIG
    data = bytearray(model_bytes())
    struct.pack_into("<I", data, 24, 9)  # n_layers
    assert errno_of(with_crc(bytes(data))) == errno.E2BIG
    assert errno_of(bytes(data) + bytes(2 << 20)) in (errno.E2BIG, errno.EBADMSG)


def test_bad_checksum():
    data = bytearray(model_bytes())
    data[HDR + 20] ^= 0x01
    assert errno_of(bytes(data)) == errno.EBADMSG
    data = bytearray(model_bytes())
    data[-1] ^= 0x80
    assert errno_of(bytes(data)) == errno.EBADMSG


@pytest.mark.parametrize("bits", [0x7FC00000, 0x7F800000, 0xFF800000, 0xFFC00001])
def test_nan_inf_weights(bits):
    data = bytearray(model_bytes(normalize=False))
    struct.pack_into("<I", data, HDR + 4 * 37, bits)
    assert errno_of(with_crc(bytes(data))) == errno.EDOM


def test_nan_or_negative_norm_stats():
    base = model_bytes()
    n_in = 8
    mean0 = HDR + 8
    var0 = HDR + 8 + 4 * n_in
    for off, bits in [(mean0, 0x7FC00000), (var0 + 8, 0x7F800000), (var0, 0xBF800000)]:
        data = bytearray(base)
        struct.pack_into("<I", data, off, bits)
        assert errno_of(with_crc(bytes(data))) == errno.EDOM
    data = bytearray(base)
    struct.pack_into("<I", data, var0 + 4, 1)  # padding of a float variance
    assert errno_of(with_crc(bytes(data))) == errno.EDOM
    fixed = bytearray(model_bytes("fixed"))
    struct.pack_into("<q", fixed, var0, -5)
    assert errno_of(with_crc(bytes(fixed))) == errno.EDOM


def test_norm_floor_is_the_same_in_both_dtypes():
    """A feature whose variance is 0 once in Q16.16 (at most half a unit,
    2^-17, as every converter rounds it) is left unscaled by a float model
    too (KML_NORM_VAR_FLOOR), so that a float model and its Q16.16
    conversion scale the same features. The float path scaled any variance
    above 1e-12, by up to a million, where the Q16.16 one did not."""
    floor = np.float32(2.0**-17)
    above = np.nextafter(floor, np.float32(1))
    variances = np.array([1e-12, 1e-9, 6e-8, floor, above, 1e-5, 4.0, 40.0], np.float32)
    n_in = 8
    var0 = HDR + 8 + 4 * n_in
    scales = {}
    for dtype in ("float32", "fixed"):
        data = bytearray(model_bytes(dtype))
        for i, v in enumerate(variances):
            if dtype == "float32":
                struct.pack_into("<fI", data, var0 + 8 * i, v, 0)
            else:
                struct.pack_into("<q", data, var0 + 8 * i, int(np.rint(np.float64(v) * 65536)))
        scales[dtype] = Model.from_bytes(with_crc(bytes(data))).norm_params()[1]
    f32, q16 = scales["float32"], scales["fixed"]
    unscaled = variances <= floor
    np.testing.assert_array_equal(f32 == 1.0, unscaled)
    np.testing.assert_array_equal(q16 == 1.0, unscaled)
    # above the floor each scales by 1 / std, Q16.16 within its rounding of
    # the variance (one unit just above the floor: 256 against 362)
    np.testing.assert_allclose(f32[4:], 1 / np.sqrt(variances[4:].astype(np.float64)), rtol=1e-5)
    np.testing.assert_array_equal(q16[4:6], [256.0, 256.0])
    np.testing.assert_allclose(q16[6:], f32[6:], rtol=1e-4)


def test_q16_rows_that_could_wrap_their_sum_are_refused():
    """kml_linear_forward_q16() sums each output's products in s64; a row
    whose weights could carry it past 2^63 (|b| 2^16 + sum |w| 2^31) is
    refused at load with EDOM, where it used to wrap silently. The bound
    is exact: one unit less loads, and predicts."""
    data = bytearray(model_bytes("fixed", normalize=False))
    n_in, hidden = 8, 16
    bias_at = HDR + 4 * hidden * n_in  # layer 1: W[16][8], then b[16]
    struct.pack_into("<i", data, bias_at + 4 * 3, -(1 << 20))  # row 3's bias
    limit = (2**63 - 1 - (1 << 20 << 16)) >> 31  # sum |w| row 3 may have
    per, rest = divmod(limit, n_in)
    weights = [per + (i < rest) for i in range(n_in)]
    for i, w in enumerate(weights):
        struct.pack_into("<i", data, HDR + 4 * (3 * n_in + i), w if i % 2 else -w)
    model = Model.from_bytes(with_crc(bytes(data)))  # at the bound
    assert np.all(np.isfinite(model.predict(np.ones((2, n_in)))))
    struct.pack_into("<i", data, HDR + 4 * (3 * n_in), -(weights[0] + 1))  # one over
    assert errno_of(with_crc(bytes(data))) == errno.EDOM
    # a float model's weights are not bounded so (they are finite floats)
    assert Model.from_bytes(model_bytes("float32", normalize=False)).dtype == "float32"


def test_garbage_fuzz():
    """Random bytes, random corruptions of a valid file (with and without a
    fixed-up CRC): always refused or loaded, never a crash."""
    rng = np.random.default_rng(99)
    good = model_bytes()
    refused = 0
    for i in range(3000):
        if i % 3 == 0:
            data = rng.bytes(int(rng.integers(0, 600)))
        else:
            buf = bytearray(good)
            for _ in range(int(rng.integers(1, 8))):
                buf[int(rng.integers(0, len(buf)))] = int(rng.integers(0, 256))
            if rng.uniform() < 0.3:
                buf = buf[: int(rng.integers(0, len(buf)))]
            data = with_crc(bytes(buf)) if i % 3 == 2 and len(buf) >= 4 else bytes(buf)
        try:
            m = Model.from_bytes(data)
        except KmlError as e:
            assert e.errno in (errno.EINVAL, errno.EBADMSG, errno.E2BIG, errno.EDOM,
                               errno.EPROTONOSUPPORT)  # fmt: skip
            refused += 1
        else:
            # only a file whose CRC was fixed up can load, and it must round-trip
            assert m.to_bytes() == data
    assert refused > 2000


@pytest.mark.parametrize(
    "var, ok",
    [
        (1 << 47, True),  # KML_Q16_VAR_MAX: var << 16 still fits
        ((1 << 47) + 1, False),
        (1 << 48, False),  # (u64)var << 16 would wrap to 0
        ((1 << 48) + 5 * 65536, False),
        ((1 << 63) - 1, False),
    ],
)
def test_q16_variance_bound(var, ok):
    """A Q16 variance above 2^47 would make norm_scale's var << 16 wrap and
    load a garbage scale: it is refused at load."""
    n_in = 8
    var0 = HDR + 8 + 4 * n_in
    fixed = bytearray(model_bytes("fixed"))
    struct.pack_into("<q", fixed, var0 + 8 * 3, var)
    data = with_crc(bytes(fixed))
    if not ok:
        assert errno_of(data) == errno.EDOM
        return
    m = Model.from_bytes(data)
    _mean, scale = m.norm_params()
    # std = 2^31.5 / 2^16 real units: scale is the Q16 of its inverse
    assert 0 <= scale[3] < 1e-3
