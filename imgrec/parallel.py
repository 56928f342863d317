"""Devices, mesh and shardings.

Data parallel by default: the batch is sharded over the `data` axis of a 1-D mesh of
every device of every process, parameters are replicated. Under `jax.jit`, reductions over
the batch (the loss, BatchNorm statistics, metrics) are over the global batch.

FSDP (`parallel.fsdp`): params, optimiser state and EMA params are sharded over that same
`data` axis too, each array along its largest dimension divisible by the device count; jit
gathers them where the step needs them whole, so the numbers are data parallel's.
"""
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from imgrec.errors import UserError


def initialize(cfg):
  """Starts multi-process JAX when configured (cfg = config.parallel), or on a TPU pod slice."""
  if cfg.coordinator_address:
    if cfg.num_processes <= 0 or cfg.process_id < 0:
      raise UserError("parallel.coordinator_address needs parallel.num_processes and parallel.process_id")
    jax.distributed.initialize(coordinator_address=cfg.coordinator_address,
                               num_processes=cfg.num_processes, process_id=cfg.process_id)
  elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    jax.distributed.initialize()  # multi-host TPU VM: everything is discovered


def sync(name):
  """Waits until every process reaches this point (nothing to wait for with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def make_mesh():
  # Auto axes: jit places the computation from the in/out shardings we give it.
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def batch_sharding(mesh):
  return NamedSharding(mesh, P("data"))


def replicated(mesh):
  return NamedSharding(mesh, P())


def check_batch(global_batch, what="batch_size"):
  n = jax.device_count()
  if global_batch % n:
    raise UserError(f"{what} {global_batch} is not divisible by the {n} devices; "
                    f"use a multiple of {n}, e.g. {max(n, global_batch // n * n)}")


def fsdp_spec(shape, n, min_size):
  """PartitionSpec splitting the largest dimension of `shape` divisible by `n` over `data`;
  replicated (P()) for arrays under `min_size` elements or with no such dimension."""
  if n <= 1 or int(np.prod(shape, dtype=np.int64)) < max(min_size, 1):
    return P()
  dims = [d for d in range(len(shape)) if shape[d] % n == 0]
  if not dims:
    return P()
  best = max(dims, key=lambda d: (shape[d], -d))  # the largest; the first of equals
  return P(*[("data" if d == best else None) for d in range(len(shape))])


def state_shardings(abstract_state, mesh, fsdp=False, min_size=0):
  """NamedShardings for a TrainState: all replicated, or FSDP for params, opt_state and ema_params
  (the step, rng and BatchNorm statistics stay replicated: small, and read whole by every device)."""
  rep = replicated(mesh)
  shardings = jax.tree.map(lambda _: rep, abstract_state)
  if not fsdp:
    return shardings
  n = mesh.shape["data"]
  shard = lambda tree: jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(a.shape, n, min_size)), tree)
  return shardings.replace(params=shard(abstract_state.params), opt_state=shard(abstract_state.opt_state),
                           ema_params=shard(abstract_state.ema_params))
