"""The ``arrow_quant`` schema metadata (read, in new and pre-0.3 layouts, and extended) and the
earlier six-column layout of the class API."""

from __future__ import annotations

import json
from typing import Any, Dict

import pyarrow as pa

from ._native import quant_metadata_entry, read_quant_metadata

META_KEY = b"arrow_quant"


def quant_metadata(obj: Any) -> Dict[str, Any]:
    """The ``arrow_quant`` metadata of a table, batch or schema (scheme, group_size, packing,
    version; for model files also ``model.*`` and any config), ``{}`` if an engine dropped it.
    Files written before 0.3 kept each entry under its own ``arrow_quant.<entry>`` key; those
    are read too (by the native reader, the one the Rust side uses)."""
    schema = obj if isinstance(obj, pa.Schema) else obj.schema
    ours = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items() if k.startswith(META_KEY)}
    return json.loads(read_quant_metadata(ours))


def with_metadata(batch_or_table: Any, **entries: Any) -> Any:
    """A copy whose ``arrow_quant`` metadata has these entries added, written as the native
    outputs write it (one key, sorted JSON: the bytes do not depend on the process)."""
    merged = {**quant_metadata(batch_or_table), **entries}
    key, value = quant_metadata_entry(json.dumps(merged, sort_keys=True))
    meta = dict(batch_or_table.schema.metadata or {})
    meta[key.encode()] = value.encode()
    return batch_or_table.replace_schema_metadata(meta)


def earlier_columns(q: Any) -> Any:
    """The earlier six columns of a quantized table or batch: without the ``group_size`` column
    (the group size stays in the schema metadata) and with ``bit_width`` as uint8."""
    i = q.schema.get_field_index("group_size")
    if i >= 0:
        q = q.remove_column(i)
    b = q.schema.get_field_index("bit_width")
    field = pa.field("bit_width", pa.uint8(), nullable=False)
    return q.set_column(b, field, q.column(b).cast(pa.uint8()))
