"""Quantize a sharded safetensors checkpoint on a Ray cluster, and read any tensor back.

    python examples/ray_quantize.py CHECKPOINT OUT_DIR [--bits 4] [--group-size 128]

CHECKPOINT is a .safetensors file, a folder of shards or a *.safetensors.index.json. Ray does the
scheduling, retries and spilling: one task per shard, each one `arrow_quant_v2.quantize_model`
on its shard (memory-mapped reads, bounded memory, written atomically) into a Parquet shard, and
a small `index.json` mapping every tensor to its shard. `read_tensor(OUT_DIR, name)` dequantizes
one tensor from the shards, with nothing but the files (the group size is a column).

`quantize_table` is the Ray Data form for a table of layers: `map_batches` with
`quantize_arrow_batch`, which takes and returns what Ray passes (a pyarrow Table).

Threads: one quantize call already uses every core of its worker. With several tasks per node,
give each its share (`num_threads`, here from the task's `num_cpus`) so the node is not
oversubscribed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import arrow_quant_v2 as aq

INDEX = "index.json"


def init_local_ray(num_cpus: int = 2) -> None:
    """A local Ray cluster whose processes talk over loopback only. On Linux Ray swaps
    127.0.0.1 for the machine's own address unless it is told it is a single-machine cluster."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)


def _shards(checkpoint: str) -> Dict[str, List[str]]:
    """Shard file -> its tensors, from the checkpoint's headers (checked by the native reader)."""
    loader = aq.ShardedSafeTensorsLoader(checkpoint)
    out: Dict[str, List[str]] = {}
    for name in loader.tensor_names():
        out.setdefault(loader.get_shard_for_tensor(name), []).append(name)
    return out


def quantize_checkpoint(checkpoint: str, out_dir: str, bit_width: int = 4, group_size: int = 128, cpus_per_task: int = 1) -> dict:
    """One Ray task per shard; returns the index written to ``out_dir/index.json``."""
    import ray

    @ray.remote(num_cpus=cpus_per_task, max_retries=2)
    def quantize_shard(shard: str, dst: str) -> List[str]:
        report = aq.quantize_model(shard, dst, bit_width=bit_width, group_size=group_size, device="cpu", num_threads=cpus_per_task)
        return report.column("name").to_pylist()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = _shards(checkpoint)
    names = {shard: f"{Path(shard).name.removesuffix('.safetensors')}.parquet" for shard in shards}
    tensors = ray.get([quantize_shard.remote(shard, str(out / names[shard])) for shard in shards])
    index = {
        "format": "arrow_quant_v2 parquet shards",
        "bit_width": bit_width,
        "group_size": group_size,
        "weight_map": {t: names[shard] for shard, ts in zip(shards, tensors) for t in ts},
    }
    (out / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True))
    return index


def read_tensor(out_dir: str, name: str) -> np.ndarray:
    """One tensor, dequantized to float32 in its shape, from the shards and the index."""
    index = json.loads((Path(out_dir) / INDEX).read_text())
    shard = Path(out_dir) / index["weight_map"][name]
    rows = pq.read_table(shard, filters=[("layer_name", "=", name)])
    back = aq.dequantize_arrow(rows)
    return np.asarray(back["weights"][0].values).reshape(back["shape"][0].as_py())


def quantize_table(table: pa.Table, out_dir: str, bit_width: int = 4, group_size: int = 128, blocks: int = 2) -> None:
    """Ray Data: a table of layers, quantized block by block and written as Parquet."""
    import ray

    ds = ray.data.from_arrow(table).repartition(blocks)
    kwargs = {"bit_width": bit_width, "group_size": group_size, "device": "cpu"}
    ds.map_batches(aq.quantize_arrow_batch, batch_format="pyarrow", fn_kwargs=kwargs).write_parquet(out_dir)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local cluster")
    a = p.parse_args(argv)
    init_local_ray(a.cpus)
    index = quantize_checkpoint(a.checkpoint, a.out_dir, a.bits, a.group_size)
    shards = sorted(set(index["weight_map"].values()))
    print(f"{len(index['weight_map'])} tensors in {len(shards)} shards under {a.out_dir}")


if __name__ == "__main__":
    main()
