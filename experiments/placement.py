"""Where arrays live: a device mesh and a memory bank sharded over its rows.

The math in `rodajax/` never names a device. Here the experiment decides the
placement: the bank `[M, D]` is padded to a multiple of the device count
(padding rows masked by `valid`) and placed with a `NamedSharding` over a
"bank" mesh axis. Jitted scoring, coreset selection and Sinkhorn then run
per shard and XLA inserts the reductions (minimum over shards for the
nearest neighbour, log-sum-exp for the potentials); tests/test_sharding.py
checks the results equal the single-device ones on 4 CPU devices.

Multi-host (jax.distributed): call `jax.distributed.initialize()` first on
every host (coordinator address, process count and id from the cluster or
flags), then `bank_mesh()` spans `jax.devices()` of all hosts; every host
runs the same program on its local data and `shard_bank` places the rows
across all devices (docs/accelerators.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "bank"


def bank_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all) with the axis "bank"."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (AXIS,))


def shard_bank(bank, mesh: Mesh, valid=None) -> tuple[jax.Array, jax.Array]:
  """`(bank [M', D], valid [M'])` placed row-wise over the mesh, M' = M padded to the devices.

  Padding rows are zeros with valid = False (`rodajax.scoring` ignores them).
  """
  bank = np.asarray(bank, np.float32)
  valid = np.ones(len(bank), bool) if valid is None else np.asarray(valid, bool)
  n = mesh.devices.size
  pad = (-len(bank)) % n
  bank = np.concatenate([bank, np.zeros((pad, bank.shape[1]), np.float32)])
  valid = np.concatenate([valid, np.zeros(pad, bool)])
  return (jax.device_put(bank, NamedSharding(mesh, P(AXIS, None))),
          jax.device_put(valid, NamedSharding(mesh, P(AXIS))))


def replicate(x, mesh: Mesh) -> jax.Array:
  """`x` copied to every device of the mesh (queries, parameters)."""
  return jax.device_put(jnp.asarray(x), NamedSharding(mesh, P()))
