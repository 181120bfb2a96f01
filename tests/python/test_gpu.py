"""device="gpu" and device="auto": the same bytes as the CPU, and the documented device choice.

These run on any wgpu adapter, lavapipe included (CI installs it). They are skipped only when
ARROW_QUANT_SKIP_GPU_TESTS=1 is set explicitly; a missing adapter is otherwise a failure.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import arrow_quant_v2 as aq
from conftest import layer_table

pytestmark = pytest.mark.skipif(os.environ.get("ARROW_QUANT_SKIP_GPU_TESTS") == "1", reason="ARROW_QUANT_SKIP_GPU_TESTS=1")


def adversarial_layers(rng, bits):
    levels = 2**bits - 1
    ties = np.array([0.0, levels] + [k + 0.5 for k in range(levels)] * 2, np.float32)
    near_ties = np.nextafter(ties, np.where(np.arange(ties.size) % 2 == 0, np.inf, -np.inf).astype(np.float32))
    near_ties[:2] = (0.0, levels)
    return {
        "normal": (rng.standard_normal((16, 200)) * 0.02).astype(np.float32),
        "ties": ties,
        "near_ties": near_ties.astype(np.float32),
        "subnormal": (rng.standard_normal(64) * 1e-40).astype(np.float32),
        "huge": (rng.uniform(-1.6e38, 1.6e38, 64)).astype(np.float32),
        "const": np.full((3, 17), -2.5, np.float32),
        "zeros": np.array([0.0, -0.0] * 12, np.float32),
        "tail_of_one": rng.standard_normal((4, 129)).astype(np.float32),
    }


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("group_size", [8, 128])
def test_gpu_bytes_equal_cpu_bytes(rng, bits, group_size):
    t = layer_table(adversarial_layers(rng, bits))
    cpu = aq.quantize_arrow(t, bit_width=bits, group_size=group_size, device="cpu")
    gpu = aq.quantize_arrow(t, bit_width=bits, group_size=group_size, device="gpu")
    assert gpu.equals(cpu)
    back_cpu = aq.dequantize_arrow(cpu, device="cpu")
    back_gpu = aq.dequantize_arrow(cpu, device="gpu")
    for i in range(back_cpu.num_rows):
        a = np.asarray(back_cpu["weights"][i].values).view(np.uint32)
        b = np.asarray(back_gpu["weights"][i].values).view(np.uint32)
        np.testing.assert_array_equal(a, b)


def test_gpu_float16_input(rng):
    w = rng.standard_normal((8, 64)).astype(np.float16)
    t = layer_table({"h": w}, pa.float16())
    assert aq.quantize_arrow(t, device="gpu", group_size=32).equals(aq.quantize_arrow(t, device="cpu", group_size=32))


def test_gpu_nan_error_matches_cpu():
    w = np.ones(300, np.float32)
    w[17] = np.nan
    t = layer_table({"x": w})
    with pytest.raises(ValueError, match=re.escape("Layer 'x' contains NaN or Inf at index 17")):
        aq.quantize_arrow(t, device="gpu")


def test_many_small_layers_on_gpu(rng):
    layers = {f"blk.{i}.norm": rng.standard_normal(8 + i % 40).astype(np.float32) for i in range(2000)}
    t = layer_table(layers)
    assert aq.quantize_arrow(t, device="gpu", group_size=16).equals(aq.quantize_arrow(t, device="cpu", group_size=16))


def run_in_subprocess(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("ARROW_QUANT_ALLOW_SOFTWARE_GPU", "NODEVICE_SELECT")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True)


def backend_in_subprocess(**env):
    return run_in_subprocess("import arrow_quant_v2 as aq; print(aq.backend_name('auto'))", **env).stdout.strip()


def software_only():
    return re.search(r"llvmpipe|lavapipe|swiftshader|\bcpu\b", aq.backend_name("gpu"), re.I) is not None


def test_auto_never_picks_a_software_adapter_by_itself():
    if not software_only():
        pytest.skip("a hardware GPU is present; auto rightly picks it")
    assert backend_in_subprocess().startswith("cpu")


def test_auto_says_why():
    name = aq.backend_name("auto")
    assert "[auto: " in name, name
    if software_only() and os.environ.get("ARROW_QUANT_ALLOW_SOFTWARE_GPU") != "1":
        assert "software adapter" in name, name


def test_auto_decides_the_search_on_its_own():
    # A process that never ran lsq has made no lsq decision, and a call too small for the GPU
    # (under 2^20 values) runs on the CPU without making one; its first larger lsq call under
    # "auto" makes it, and backend_name("auto") then gives both.
    code = (
        "import arrow_quant_v2 as aq, numpy as np, pyarrow as pa\n"
        "t = lambda n: pa.table({'layer_name': ['x'], 'weights': pa.array([np.linspace(-1, 1, n, dtype=np.float32)], pa.list_(pa.float32()))})\n"
        "print(aq.backend_name('auto')); aq.quantize_arrow(t(4096), device='auto', method='lsq'); print(aq.backend_name('auto'))\n"
        "aq.quantize_arrow(t(1 << 20), device='auto', method='lsq'); print(aq.backend_name('auto'))"
    )
    before, small, after = run_in_subprocess(code).stdout.strip().splitlines()
    assert small == before, (before, small)
    assert "; lsq: " not in before and "; lsq: " in after, after
    assert after.startswith(before[:-1]), (before, after)
    if software_only():
        assert "; lsq: cpu (" in after and "software adapter" in after.split("; lsq: ")[1], after


def test_auto_decides_each_ggml_type_on_its_own():
    # gguf_quantize(device="auto") decides per type with a GPU kernel, on first use, by a
    # measurement (a software adapter never wins unless allowed); a type without one just runs
    # on the CPU. A tensor smaller than the type's measurement (2^20 values for q8_0, 2^18 for
    # the K types) runs on the CPU without deciding.
    code = (
        "import arrow_quant_v2 as aq, numpy as np\n"
        "print(aq.backend_name('auto'))\n"
        "for rows in (4, 256):\n"
        "    x = np.linspace(-1, 1, 4096 * rows, dtype=np.float32).reshape(rows, 4096)\n"
        "    a, b = aq.gguf_quantize(x, 'q8_0', device='auto'), aq.gguf_quantize(x, 'q6_k', device='auto')\n"
        "    assert a == aq.gguf_quantize(x, 'q8_0', device='cpu') and b == aq.gguf_quantize(x, 'q6_k', device='cpu')\n"
        "    print(aq.backend_name('auto'))"
    )
    for env in ({}, {"ARROW_QUANT_ALLOW_SOFTWARE_GPU": "1"}):
        before, small, after = run_in_subprocess(code, **env).stdout.strip().splitlines()
        assert small == before, (before, small)
        assert "; q8_0: " not in before and "; q8_0: " in after, after
        assert ("; q6_k: " in after) == ("q6_k" in aq.GGUF_GPU_TYPES), after
        q8 = after.split("; q8_0: ")[1]
        if software_only():
            assert q8.startswith("gpu: software adapter allowed") if env else (q8.startswith("cpu: ") and "software adapter" in q8), after


def test_starting_the_gpu_prints_nothing():
    # Mesa's device-select layer used to print "XDG_RUNTIME_DIR is invalid" twice per process
    # on machines without a display session (CI has none: XDG_RUNTIME_DIR is unset here).
    out = run_in_subprocess(
        "import arrow_quant_v2 as aq, numpy as np, pyarrow as pa\n"
        "t = pa.table({'layer_name': ['x'], 'weights': pa.array([np.ones(256, np.float32)], pa.list_(pa.float32()))})\n"
        "aq.quantize_arrow(t, device='gpu'); aq.quantize_arrow(t, device='auto'); print(aq.backend_name('auto'))",
        XDG_RUNTIME_DIR="",
    )
    assert out.stderr == "", out.stderr
    assert out.stdout.strip()


def test_software_adapter_can_be_allowed_for_auto():
    if not software_only():
        pytest.skip("a hardware GPU is present")
    assert not backend_in_subprocess(ARROW_QUANT_ALLOW_SOFTWARE_GPU="1").startswith("cpu")


def test_gpu_runs_lsq_like_the_cpu_or_refuses_it(rng):
    # Large enough (2^20 weights) that auto's GPU takes the call where it is allowed to.
    t = layer_table({"big.weight": (rng.standard_normal((256, 4096)) * 0.02).astype(np.float32)})
    cpu = aq.quantize_arrow(t, device="cpu", method="lsq")
    try:
        gpu = aq.quantize_arrow(t, device="gpu", method="lsq")
    except NotImplementedError as e:
        # Only an adapter that flushes subnormal floats may refuse it.
        assert "subnormal" in str(e) and "big.weight" in str(e), e
    else:
        assert gpu.equals(cpu)
    assert aq.quantize_arrow(t, device="auto", method="lsq").equals(cpu)
