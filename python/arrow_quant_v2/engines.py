"""What distributed engines need: functions over an iterator of batches (Spark's
``mapInArrow``), and output schemas declared up front in Spark's terms.

The schemas themselves come from the native code (one definition); this module only spells them
for Spark. Every function here is a module-level function of the installed package, so engines
pickle it by reference and their workers import it.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Literal

import pyarrow as pa

from ._native import dequantize_arrow_batch, dequantized_schema, quantize_arrow_batch, quantized_schema

Op = Literal["quantize", "dequantize"]


def quantize_batches(
    batches: Iterable[Any], *, bit_width: int = 4, group_size: int = 128, device: str = "auto", method: str = "minmax"
) -> Iterator[pa.RecordBatch]:
    """``quantize_arrow_batch`` over an iterator of batches, e.g.
    ``df.mapInArrow(functools.partial(aq.quantize_batches, bit_width=4), aq.spark_ddl())``
    (with ``method="lsq"``, declare ``spark_ddl(method="lsq")``: it has the `method` column)."""
    for b in batches:
        yield quantize_arrow_batch(b, bit_width=bit_width, group_size=group_size, device=device, method=method)


def dequantize_batches(batches: Iterable[Any], *, device: str = "auto", group_size: Any = None) -> Iterator[pa.RecordBatch]:
    """``dequantize_arrow_batch`` over an iterator of batches (schema: ``spark_ddl("dequantize")``)."""
    for b in batches:
        yield dequantize_arrow_batch(b, device=device, group_size=group_size)


# Arrow type -> Spark SQL type, for the types our outputs use (Spark has no unsigned integers,
# which is why bit_width is int8 and group_size int64).
_SPARK_TYPES = {
    pa.string(): "string",
    pa.binary(): "binary",
    pa.large_binary(): "binary",
    pa.float32(): "float",
    pa.float64(): "double",
    pa.int8(): "tinyint",
    pa.int32(): "int",
    pa.int64(): "bigint",
}


def _schema(op: Op, group_size: int, method: str = "minmax") -> pa.Schema:
    if op == "quantize":
        return quantized_schema(group_size, method)
    if op == "dequantize":
        return dequantized_schema()
    raise ValueError(f"op must be 'quantize' or 'dequantize', got {op!r}")


def _spark_type(t: pa.DataType) -> str:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"array<{_spark_type(t.value_type)}>"
    if t in _SPARK_TYPES:
        return _SPARK_TYPES[t]
    raise TypeError(f"no Spark type for Arrow type {t}")


def spark_ddl(op: Op = "quantize", group_size: int = 128, method: str = "minmax") -> str:
    """The Spark DDL of what ``quantize_batches`` (or ``dequantize_batches``) yields, for
    ``df.mapInArrow(fn, spark_ddl())``; pass the ``method`` the batches are quantized with."""
    return ", ".join(f"{f.name} {_spark_type(f.type)}" for f in _schema(op, group_size, method))


def spark_schema(op: Op = "quantize", group_size: int = 128, method: str = "minmax") -> Any:
    """The same as a ``pyspark.sql.types.StructType`` (needs pyspark; no session)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(_schema(op, group_size, method))
