"""llama.cpp itself as the judge of a GGUF file: ``llama_model_load_from_file`` of the libllama
that the PyPI package ``xllamacpp==2026.10.11549`` links into its extension module
(``site-packages/xllamacpp/xllamacpp.abi3.so`` exports llama.cpp's C API), called through ctypes.

The library is only ever opened in a child process (``subprocess.run([sys.executable, "-c",
...])``): llama.cpp aborts the process on a failed assertion, and an abort must fail a test, not
end the test run. Only exported C functions are used; the Python part of xllamacpp is never
imported (it is installed with ``--no-deps``).

    >>> res = load("model.gguf")
    >>> res.ok, res.desc, res.errors
    (True, 'bert 22M Q4_K - Medium', [])

``load_many(paths)`` opens several files in one child (each model is freed before the next);
a file whose child dies is retried alone, so one abort cannot hide the other results.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

_MARK = "@@LLAMA_LOAD@@"

# The child. llama_model_params is returned and passed by value; on x86-64 (System V) a struct of
# more than 16 bytes is returned through a hidden pointer and passed on the stack, so an opaque
# Structure larger than the real one (a few hundred bytes at most) works for both and carries
# llama.cpp's defaults back unchanged. The log goes through llama_log_set into a buffer per file,
# so the parent gets each file's error lines; what ggml prints before aborting goes to stderr.
_CHILD = r"""
import ctypes, json, sys
MARK = sys.argv[1]
L = ctypes.CDLL(sys.argv[2])

class Params(ctypes.Structure):
    _fields_ = [("opaque", ctypes.c_uint8 * 1024)]

LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
log = []  # (level, text)
last = [0]
def on_log(level, text, user):
    text = (text or b"").decode("utf-8", "replace")
    if level == 5:  # GGML_LOG_LEVEL_CONT: continues the previous message
        level = last[0]
    last[0] = level
    log.append((level, text))
cb = LOG_CB(on_log)
L.llama_log_set.restype = None
L.llama_log_set.argtypes = [LOG_CB, ctypes.c_void_p]
L.llama_log_set(cb, None)

L.llama_backend_init.restype = None
L.llama_backend_init()
L.llama_model_default_params.restype = Params
L.llama_model_load_from_file.restype = ctypes.c_void_p
L.llama_model_load_from_file.argtypes = [ctypes.c_char_p, Params]
L.llama_model_desc.restype = ctypes.c_int32
L.llama_model_desc.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
L.llama_model_n_params.restype = ctypes.c_uint64
L.llama_model_n_params.argtypes = [ctypes.c_void_p]
L.llama_model_free.restype = None
L.llama_model_free.argtypes = [ctypes.c_void_p]

for path in sys.argv[3:]:
    del log[:]
    sys.stdout.write(MARK + json.dumps({"start": path}) + "\n")
    sys.stdout.flush()
    m = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
    res = {"path": path, "ok": bool(m)}
    if m:
        buf = ctypes.create_string_buffer(256)
        L.llama_model_desc(m, buf, 256)
        res["desc"] = buf.value.decode("utf-8", "replace")
        res["n_params"] = int(L.llama_model_n_params(m))
        L.llama_model_free(m)
    text = {}
    for level, t in log:
        text.setdefault(level, []).append(t)
    res["errors"] = [l for l in "".join(text.get(4, [])).splitlines() if l.strip()]
    res["warnings"] = [l for l in "".join(text.get(3, [])).splitlines() if l.strip()]
    sys.stdout.write(MARK + json.dumps(res) + "\n")
    sys.stdout.flush()
L.llama_backend_free()
"""


@dataclass
class LoadResult:
    path: str
    ok: bool
    desc: str = ""
    n_params: int = 0
    errors: List[str] = field(default_factory=list)  # llama.cpp's ERROR log lines, or the crash
    warnings: List[str] = field(default_factory=list)
    returncode: Optional[int] = 0

    def why(self) -> str:
        """A one-paragraph account for an assertion message."""
        lines = self.errors or self.warnings
        return f"{self.path}: ok={self.ok} rc={self.returncode} " + (" | ".join(lines[-8:]) or "(no log lines)")


def library_path() -> Path:
    """xllamacpp's extension module (llama.cpp with its C symbols exported), or $LLAMA_LIB."""
    if os.environ.get("LLAMA_LIB"):
        return Path(os.environ["LLAMA_LIB"])
    spec = importlib.util.find_spec("xllamacpp")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("xllamacpp==2026.10.11549 is not installed (pip install --no-deps xllamacpp==2026.10.11549)")
    lib = Path(list(spec.submodule_search_locations)[0]) / "xllamacpp.abi3.so"
    if not lib.exists():
        raise RuntimeError(f"{lib} is missing: the xllamacpp package does not hold llama.cpp's library")
    return lib


def _run(paths: Sequence[str], timeout: float) -> tuple:
    """One child for `paths`: ({path: LoadResult}, the path being loaded when it died, rc, stderr)."""
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, _MARK, str(library_path()), *paths],
        capture_output=True, text=True, timeout=timeout,
    )
    done, current = {}, None
    for line in p.stdout.splitlines():
        if not line.startswith(_MARK):
            continue
        msg = json.loads(line[len(_MARK):])
        if "start" in msg:
            current = msg["start"]
            continue
        done[msg["path"]] = LoadResult(
            path=msg["path"], ok=msg["ok"], desc=msg.get("desc", ""), n_params=msg.get("n_params", 0),
            errors=msg["errors"], warnings=msg["warnings"], returncode=0,  # this load completed
        )
        current = None
    return done, current, p.returncode, p.stderr


def load_many(paths: Sequence, timeout: float = 300) -> List[LoadResult]:
    """Loads every file with llama.cpp (one child process; a file whose load kills the child is
    reported with ``ok=False`` and the child's last stderr lines, and the rest are retried)."""
    todo = [os.path.abspath(str(p)) for p in paths]
    results = {}
    while todo:
        done, crashed, rc, stderr = _run(todo, timeout)
        results.update(done)
        if crashed is None and len(done) == len(todo):
            break
        culprit = crashed or next(p for p in todo if p not in done)
        tail = [l for l in stderr.splitlines() if l.strip()][-12:]
        results[culprit] = LoadResult(path=culprit, ok=False, errors=tail or [f"child exited with status {rc}"],
                                      returncode=rc)
        todo = [p for p in todo if p not in results]
    return [results[os.path.abspath(str(p))] for p in paths]


def load(path, timeout: float = 300) -> LoadResult:
    """``llama_model_load_from_file(path, llama_model_default_params())`` in a child process."""
    return load_many([path], timeout)[0]


if __name__ == "__main__":  # python tests/python/llama_loader.py FILE.gguf ...
    for r in load_many(sys.argv[1:]):
        print(("LOADED " + r.desc) if r.ok else "REFUSED " + r.why())
