"""Whole GGUF files: `arrow-quant quantize` against llama.cpp's `llama-quantize` on the same
input, the same targets and the same thread count, timed wall clock in the same run.

After timing, the two outputs are compared tensor by tensor (type and bytes, matched by name:
llama-quantize sorts tensors by layer, arrow-quant keeps the input order) and the metadata key
by key, so a speed figure is only printed next to "equal".

    python benches/gguf_file.py model-F16.gguf [--types q4_0,q4_k_m,q6_k] [--threads 2]
        [--llama-quantize PATH] [--arrow-quant PATH] [--repeat 3]

`llama-quantize` is looked up on PATH unless given; without one, only arrow-quant is timed.
`arrow-quant` defaults to target/release/arrow-quant (build it with `cargo build --release`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def differences(ours: Path, theirs: Path) -> list[str]:
    """Names of metadata keys and tensors that differ (empty when the files agree)."""
    import gguf

    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
    out = []
    if [f.name for f in a.fields.values()] != [f.name for f in b.fields.values()]:
        out.append("metadata keys")
    for name, fa in a.fields.items():
        fb = b.fields.get(name)
        if fb is None or fa.types != fb.types or any(
            not np.array_equal(x, y) for x, y in zip(fa.parts, fb.parts)
        ):
            out.append(f"metadata {name}")
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    if set(ta) != set(tb):
        out.append("tensor names")
    for name in ta.keys() & tb.keys():
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type or x.data.tobytes() != y.data.tobytes():
            out.append(f"tensor {name}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", type=Path)
    p.add_argument("--types", default="q4_0,q8_0,q3_k_m,q4_k_m,q6_k")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--llama-quantize", default=shutil.which("llama-quantize"))
    p.add_argument("--arrow-quant", default=str(HERE.parent / "target" / "release" / "arrow-quant"))
    args = p.parse_args()

    if not Path(args.arrow_quant).exists():
        sys.exit(f"no arrow-quant at {args.arrow_quant}: run `cargo build --release` first")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    print(f"{args.input} ({args.input.stat().st_size / 1e6:.0f} MB), {args.threads} threads, "
          f"best of {args.repeat}")
    print(f"{'target':8} {'arrow-quant':>12} {'llama-quantize':>15} {'ratio':>7}  output")
    with tempfile.TemporaryDirectory() as tmp:
        for t in args.types.split(","):
            ours, theirs = Path(tmp, f"ours-{t}.gguf"), Path(tmp, f"theirs-{t}.gguf")
            ours_cmd = [args.arrow_quant, "quantize", str(args.input), "-o", str(ours), "--type", t]
            theirs_cmd = None
            if args.llama_quantize:
                theirs_cmd = [args.llama_quantize, str(args.input), str(theirs), t.upper(),
                              str(args.threads)]
            best_ours = best_theirs = float("inf")
            # Interleaved so that a burst of load on the shared machine hits both alike.
            for _ in range(args.repeat):
                best_ours = min(best_ours, timed(ours_cmd, env))
                if theirs_cmd:
                    best_theirs = min(best_theirs, timed(theirs_cmd, env))
            if theirs_cmd:
                diff = differences(ours, theirs)
                verdict = "equal" if not diff else f"DIFFERENT: {', '.join(diff[:4])}"
                print(f"{t:8} {best_ours:11.2f}s {best_theirs:14.2f}s "
                      f"{best_theirs / best_ours:6.2f}×  {verdict}")
            else:
                print(f"{t:8} {best_ours:11.2f}s {'-':>15} {'-':>7}")
            ours.unlink(missing_ok=True)
            theirs.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
