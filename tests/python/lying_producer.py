"""An Arrow producer that lies: valid data exported by pyarrow into C Data Interface structs,
then edited (lengths, child and buffer counts) before a consumer imports it. It stands for a
buggy or hostile extension library; the consumer must refuse it, never read out of bounds.
"""

from __future__ import annotations

import ctypes

import pyarrow as pa


class ArrowSchema(ctypes.Structure):
    pass


ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p),
    ("name", ctypes.c_char_p),
    ("metadata", ctypes.c_char_p),
    ("flags", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(ArrowSchema))),
    ("dictionary", ctypes.POINTER(ArrowSchema)),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]


class ArrowArray(ctypes.Structure):
    pass


ArrowArray._fields_ = [
    ("length", ctypes.c_int64),
    ("null_count", ctypes.c_int64),
    ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(ArrowArray))),
    ("dictionary", ctypes.POINTER(ArrowArray)),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]


class ArrowArrayStream(ctypes.Structure):
    pass


_GET_SCHEMA = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ArrowArrayStream), ctypes.POINTER(ArrowSchema))
_GET_NEXT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ArrowArrayStream), ctypes.POINTER(ArrowArray))
_GET_ERROR = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.POINTER(ArrowArrayStream))
_RELEASE = ctypes.CFUNCTYPE(None, ctypes.POINTER(ArrowArrayStream))

ArrowArrayStream._fields_ = [
    ("get_schema", _GET_SCHEMA),
    ("get_next", _GET_NEXT),
    ("get_last_error", _GET_ERROR),
    ("release", _RELEASE),
    ("private_data", ctypes.c_void_p),
]

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def _capsule(struct, name: bytes):
    return _capsule_new(ctypes.addressof(struct), name, None)


def export(batch: pa.RecordBatch) -> tuple[ArrowSchema, ArrowArray]:
    """The C structs of `batch`, ready to be edited."""
    schema, array = ArrowSchema(), ArrowArray()
    batch._export_to_c(ctypes.addressof(array), ctypes.addressof(schema))
    return schema, array


def child(array: ArrowArray, *path: int) -> ArrowArray:
    """The child array at `path` (column index, then nested child indices)."""
    for i in path:
        array = array.children[i].contents
    return array


class LyingBatch:
    """Hands out `array` as a record batch through ``__arrow_c_array__`` (once)."""

    def __init__(self, schema: ArrowSchema, array: ArrowArray):
        self.schema, self.array = schema, array

    def __arrow_c_array__(self, requested_schema=None):
        return _capsule(self.schema, b"arrow_schema"), _capsule(self.array, b"arrow_array")


class LyingStream:
    """A C stream that declares `schema` and then hands out each of `batches` (pyarrow record
    batches, whatever their own schema) as if it matched."""

    def __init__(self, schema: pa.Schema, batches: list[pa.RecordBatch]):
        self._schema, self._batches = schema, list(batches)
        self._callbacks = (
            _GET_SCHEMA(self._get_schema),
            _GET_NEXT(self._get_next),
            _GET_ERROR(lambda _s: None),
            _RELEASE(self._release),
        )
        self.stream = ArrowArrayStream(*self._callbacks, None)

    def _get_schema(self, _stream, out):
        self._schema._export_to_c(ctypes.addressof(out.contents))
        return 0

    def _get_next(self, _stream, out):
        if not self._batches:
            out.contents.release = None
            return 0
        self._batches.pop(0)._export_to_c(ctypes.addressof(out.contents))
        return 0

    def _release(self, stream):
        stream.contents.release = _RELEASE()

    def __arrow_c_stream__(self, requested_schema=None):
        return _capsule(self.stream, b"arrow_array_stream")
