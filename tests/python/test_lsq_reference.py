"""``method="lsq"`` in numpy (``arrow_quant_v2.reference``): its guarantees, and the same bytes
as the native implementation (src/quant/lsq.rs)."""

import numpy as np
import pytest

import arrow_quant_v2 as aq
from arrow_quant_v2 import reference
from conftest import layer_table


def gaussian_groups(rng, count, group_size):
    return (rng.standard_normal((count, group_size)) * 0.02).astype(np.float32)


def snr_gain_db(w, bit_width, group_size):
    def sse(method):
        packed, scales, zeros = reference.quantize(w, w.shape, bit_width, group_size, method=method)
        back = reference.dequantize(packed, scales, zeros, w.shape, bit_width, group_size)
        return float(np.sum((back.astype(np.float64) - w.reshape(-1).astype(np.float64)) ** 2))

    return 10 * np.log10(sse("minmax") / sse("lsq"))


@pytest.mark.parametrize("bit_width,group_size,min_gain_db", [(2, 64, 1.5), (4, 128, 0.2)])
def test_lsq_gains_snr_on_gaussian_data(rng, bit_width, group_size, min_gain_db):
    w = gaussian_groups(rng, 200, group_size)
    gain = snr_gain_db(w, bit_width, group_size)
    assert gain > min_gain_db, f"{bit_width}-bit g{group_size}: {gain:.2f} dB"


@pytest.mark.parametrize("bit_width,group_size", [(2, 64), (4, 128), (8, 128), (4, 37)])
def test_lsq_never_loses_to_minmax_in_its_own_sse(rng, bit_width, group_size):
    """The guarantee is on the definition's float32 ``sse``: a group keeps min/max unless a fit
    is strictly better."""
    w = gaussian_groups(rng, 300, group_size)
    levels = np.float32(2**bit_width - 1)
    mm_scale, mm_zero, mm_inv = reference._minmax_grid(w, levels)
    scale, zero, inv = reference.lsq_grids(w, bit_width)
    before = reference.lsq_sse(w, mm_scale, mm_zero, mm_inv, bit_width)
    after = reference.lsq_sse(w, scale, zero, inv, bit_width)
    assert before.dtype == after.dtype == np.float32
    assert np.all(after <= before)
    assert np.any(after < before)


def test_lsq_math_stays_float32(rng):
    w = gaussian_groups(rng, 4, 40)
    for x in reference.lsq_grids(w, 4):
        assert x.dtype == np.float32
    _, scales, zeros = reference.quantize(w, w.shape, 4, 16, method="lsq")
    assert scales.dtype == zeros.dtype == np.float32


def test_default_method_is_minmax(rng):
    w = gaussian_groups(rng, 3, 100)
    a = reference.quantize(w, w.shape, 4, 32)
    b = reference.quantize(w, w.shape, 4, 32, method="minmax")
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1].view(np.uint32), b[1].view(np.uint32))
    np.testing.assert_array_equal(a[2].view(np.uint32), b[2].view(np.uint32))
    with pytest.raises(ValueError):
        reference.quantize(w, w.shape, 4, 32, method="nope")


def assert_same(a, b, what=""):
    assert a[0] == b[0], f"packed bytes differ {what}"
    np.testing.assert_array_equal(a[1].view(np.uint32), b[1].view(np.uint32), err_msg=f"scales {what}")
    np.testing.assert_array_equal(a[2].view(np.uint32), b[2].view(np.uint32), err_msg=f"zero points {what}")


@pytest.mark.parametrize("bit_width", [2, 4, 8])
def test_constant_and_two_level_groups_keep_the_minmax_bytes(bit_width):
    rows = [
        np.full(64, 0.5, np.float32),
        np.full(64, -0.0, np.float32),
        np.array([0.0, -0.0] * 32, np.float32),
        np.full(64, 1e-30, np.float32),
        np.full(64, 1e30, np.float32),
        np.full(64, 1e-45, np.float32),
        np.array([-1.0 if i % 3 == 0 else 2.0 for i in range(64)], np.float32),
        np.array([0.0 if i % 2 else 1.0 for i in range(64)], np.float32),
        np.array([-0.25 if i < 10 else 0.75 for i in range(64)], np.float32),
    ]
    w = np.stack(rows)
    for g in (64, 16, 24):
        assert_same(
            reference.quantize(w, w.shape, bit_width, g, method="lsq"),
            reference.quantize(w, w.shape, bit_width, g),
            f"at {bit_width} bits g{g}",
        )


def adversarial_rows(rng, row_len, bit_width):
    levels = 2**bit_width - 1
    gauss = lambda: rng.standard_normal(row_len)  # noqa: E731
    rows = [
        gauss() * 0.02,
        gauss(),
        np.full(row_len, 0.3),  # constant
        np.where(rng.random(row_len) < 0.5, -1.0, 2.0),  # two values
        np.where(rng.random(row_len) < 0.3, 0.1, -0.7),
        gauss() * 1e-30,  # tiny: e*e underflows
        gauss() * 1e-18,  # e*e lands among the subnormals
        gauss() * 1e-15,
        np.full(row_len, 1e-30) + (rng.random(row_len) < 0.5) * 1e-37,
        gauss() * 1e30,  # huge: e*e overflows, sse is inf
        gauss() * 1e18,
        gauss() * 1e-40,  # subnormals
        (rng.integers(-5, 6, row_len) * 1e-45),  # subnormal multiples of the smallest one
        gauss() * 1e-38,  # normal and subnormal mixed
        np.where(rng.random(row_len) < 0.05, gauss() * 10, gauss() * 0.01),  # outliers
        rng.integers(0, levels + 1, row_len) + 0.5 * (rng.random(row_len) < 0.5),  # ties
        np.where(rng.random(row_len) < 0.5, 0.0, -0.0),
        rng.random(row_len) * 3e38 - 1.5e38,  # near the width limit
    ]
    return np.stack([np.asarray(r, np.float64).astype(np.float32) for r in rows])


@pytest.mark.parametrize("bit_width", [2, 4, 8])
@pytest.mark.parametrize("group_size", [64, 128])
def test_native_lsq_bytes_equal_the_numpy_reference(rng, bit_width, group_size):
    row_len = 3 * group_size + 37  # a short last group in every row
    layers = {
        "normal": rng.standard_normal((12, row_len)).astype(np.float32),
        "adversarial": adversarial_rows(rng, row_len, bit_width),
        "short": rng.standard_normal((5, 11)).astype(np.float32),  # rows shorter than a lane chunk
        "vec": rng.standard_normal(group_size * 2 + 17).astype(np.float32),
    }
    q = aq.quantize_arrow(layer_table(layers), bit_width=bit_width, group_size=group_size, method="lsq", device="cpu")
    for i, (name, w) in enumerate(layers.items()):
        packed, scales, zeros = reference.quantize(w, np.shape(w), bit_width, group_size, method="lsq")
        native = (
            q["quantized_data"][i].as_py(),
            np.asarray(q["scales"][i].values),
            np.asarray(q["zero_points"][i].values),
        )
        if native[0] != packed or not (
            np.array_equal(native[1].view(np.uint32), scales.view(np.uint32))
            and np.array_equal(native[2].view(np.uint32), zeros.view(np.uint32))
        ):
            bad = np.flatnonzero(
                (native[1].view(np.uint32) != scales.view(np.uint32)) | (native[2].view(np.uint32) != zeros.view(np.uint32))
            )
            pytest.fail(
                f"{name} at {bit_width} bits g{group_size}: groups {bad[:10].tolist()} differ "
                f"(native scale/zero {native[1][bad[:3]]}/{native[2][bad[:3]]}, "
                f"reference {scales[bad[:3]]}/{zeros[bad[:3]]}); packed equal: {native[0] == packed}"
            )


def scalar_lsq(values, bit_width):
    """src/quant/lsq.rs transcribed line by line on numpy float32 scalars (slow, independent of
    the vectorized reference)."""
    f = np.float32
    L = f(2**bit_width - 1)
    magic = f(8388608.0)
    vals = [f(v) for v in values]

    def fold(lanes):
        lanes = list(lanes)
        half = 8
        while half:
            for j in range(half):
                lanes[j] = f(lanes[j] + lanes[j + half])
            half //= 2
        return lanes[0]

    def code(w, g):
        t = f((w - g[1]) * g[2])
        t = t if t > 0 else f(0)
        t = t if t < L else L
        return f(f(t + magic) - magic)

    def evaluate(g):
        acc = [[f(0)] * 16 for _ in range(4)]
        for i, w in enumerate(vals):
            j = i % 16
            q = code(w, g)
            e = f(f(f(q * g[0]) + g[1]) - w)
            acc[0][j] = f(acc[0][j] + f(e * e))
            acc[1][j] = f(acc[1][j] + q)
            acc[2][j] = f(acc[2][j] + f(q * q))
            acc[3][j] = f(acc[3][j] + f(q * w))
        return [fold(a) for a in acc]

    key = lambda v: int(np.array(v).view(np.int32)) ^ (0x7FFFFFFF if np.signbit(v) else 0)  # noqa: E731
    lo = min(vals, key=key)
    hi = max(vals, key=key)
    width = f(hi - lo)
    inv = f(L / width)
    start = (f(0), lo, f(0)) if not np.isfinite(inv) else (f(width / L), lo, inv)
    if start[0] == 0:
        return start
    lanes = [f(0)] * 16
    for i, w in enumerate(vals):
        lanes[i % 16] = f(lanes[i % 16] + w)
    sw = fold(lanes)
    last = evaluate(start)
    best, best_sse = start, last[0]
    m = f(len(vals))
    for _ in range(5):
        _, sq, sqq, sqw = last
        d = f(f(m * sqq) - f(sq * sq))
        if not d > 0:
            break
        scale = f(f(f(m * sqw) - f(sq * sw)) / d)
        zero = f(f(f(sqq * sw) - f(sq * sqw)) / d)
        inv = f(f(1) / scale)
        if not (scale > 0 and np.isfinite(scale) and np.isfinite(zero) and np.isfinite(inv)):
            break
        g = (scale, zero, inv)
        last = evaluate(g)
        if last[0] < best_sse:
            best, best_sse = g, last[0]
    return best


@pytest.mark.parametrize("bit_width", [2, 4, 8])
def test_vectorized_reference_equals_a_scalar_transcription(rng, bit_width):
    rows = adversarial_rows(rng, 45, bit_width)
    rows = np.concatenate([rows, gaussian_groups(rng, 8, 45)])
    with np.errstate(all="ignore"):
        want = np.array([scalar_lsq(r, bit_width) for r in rows], np.float32)
    got = np.stack(reference.lsq_grids(rows, bit_width), axis=1)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
