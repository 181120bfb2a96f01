import numpy as np
import pyarrow as pa
import pytest


def layer_table(layers, value_type=pa.float32(), with_shape=True):
    """A table of layers from ``{name: ndarray}`` with the weights column typed ``value_type``."""
    cols = {
        "layer_name": list(layers),
        "weights": pa.array([np.asarray(a).ravel() for a in layers.values()], pa.list_(value_type)),
    }
    if with_shape:
        cols["shape"] = pa.array([list(np.shape(a)) for a in layers.values()], pa.list_(pa.int64()))
    return pa.table(cols)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
