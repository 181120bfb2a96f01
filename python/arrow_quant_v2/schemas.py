"""The ``arrow_quant`` schema metadata: read (new and pre-0.3 layouts) and extended."""

from __future__ import annotations

import json
from typing import Any, Dict

import pyarrow as pa

META_KEY = b"arrow_quant"

def quant_metadata(obj: Any) -> Dict[str, Any]:
    """The ``arrow_quant`` metadata of a table, batch or schema (scheme, group_size, packing,
    version; for model files also ``model.*`` and any config), ``{}`` if an engine dropped it.
    Files written before 0.3 kept each entry under its own ``arrow_quant.<entry>`` key; those
    are read too."""
    schema = obj if isinstance(obj, pa.Schema) else obj.schema
    meta = schema.metadata or {}
    out: Dict[str, Any] = {}
    if META_KEY in meta:
        out.update(json.loads(meta[META_KEY]))
    for k, v in meta.items():
        if k.startswith(META_KEY + b".") and k[len(META_KEY) + 1 :].decode() not in out:
            out[k[len(META_KEY) + 1 :].decode()] = v.decode()
    return out


def with_metadata(batch_or_table: Any, **entries: Any) -> Any:
    """A copy whose ``arrow_quant`` metadata has these entries added (keys kept sorted, so the
    bytes written do not depend on the process)."""
    merged = {**quant_metadata(batch_or_table), **entries}
    meta = dict(batch_or_table.schema.metadata or {})
    meta[META_KEY] = json.dumps(merged, sort_keys=True, separators=(",", ":")).encode()
    return batch_or_table.replace_schema_metadata(meta)
