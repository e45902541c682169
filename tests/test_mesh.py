"""Mesh construction on 8 fake devices and the logical-axis rules."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from t1_jax import mesh as mesh_lib
from t1_jax.config import ConfigError, MeshConfig


def test_mesh_shape_and_axes():
    m = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert m.axis_names == ("data", "fsdp", "tensor")
    assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh_lib.batch_shard_count(m) == 4
    assert sorted(d.id for d in m.devices.flat) == list(range(8))


def test_minus_one_takes_remaining_devices():
    assert dict(mesh_lib.make_mesh(MeshConfig(data=-1, fsdp=1, tensor=2)).shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    assert dict(mesh_lib.make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1)).shape) == {"data": 1, "fsdp": 8, "tensor": 1}


def test_mesh_that_does_not_fit_is_refused():
    with pytest.raises(ConfigError, match="does not divide 8 devices"):
        mesh_lib.make_mesh(MeshConfig(data=-1, fsdp=3, tensor=1))


@pytest.mark.parametrize("axes,expected", [
    (("batch", "length", "embed"), P(("data", "fsdp"), None, None)),
    (("vocab", "embed"), P("tensor", "fsdp")),
    (("embed", "mlp"), P("fsdp", "tensor")),
    (("layers", "embed", "heads", "head_dim"), P(None, "fsdp", "tensor", None)),
    (("embed", "kv_heads", "head_dim"), P("fsdp", "tensor", None)),
    (("batch", "length", "heads", "head_dim"), P(("data", "fsdp"), None, "tensor", None)),
    (("batch", None), P(("data", "fsdp"), None)),
])
def test_logical_rules(axes, expected):
    assert mesh_lib.logical_to_spec(axes) == expected


def test_unknown_logical_axis_is_named():
    with pytest.raises(KeyError, match="logical axis 'emb'"):
        mesh_lib.logical_to_spec(("emb",))


def test_constrain_applies_real_sharding_on_cpu():
    m = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    x = jnp.arange(8 * 4 * 6, dtype=jnp.float32).reshape(8, 4, 6)

    def f(x):
        return mesh_lib.constrain(x * 2, ("batch", "length", "embed"))

    with mesh_lib.use_mesh(m):
        y = jax.jit(f)(x)
    assert y.sharding.spec == P(("data", "fsdp"))
    assert len(y.addressable_shards) == 8 and y.addressable_shards[0].data.shape == (2, 4, 6)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x) * 2)
    # Without an active mesh, constrain is the identity (the single-device reference path).
    assert mesh_lib.constrain(x, ("batch", "length", "embed")) is x
