"""The training state: one pytree holding everything a step reads and writes.

  TrainState(step, params, batch_stats, opt_state, rng, ema_params, ema_batch_stats)

The EMA fields are empty dicts unless `optim.ema_decay > 0`; then evaluation uses the EMA
params together with the EMA of the BatchNorm statistics, so the two always belong together.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key: saved by Orbax like any array
  ema_params: Any = None  # EMA of params when optim.ema_decay > 0, else an empty dict
  ema_batch_stats: Any = None  # EMA of batch_stats alongside, else an empty dict


def init_state(model, tx, seed, image_shape, ema=False):
  """The initial TrainState; pure in `seed`, so it can run under jit with output shardings."""
  rng = jax.random.PRNGKey(seed)
  init_rng, state_rng = jax.random.split(rng)
  variables_ = model.init({"params": init_rng, "dropout": init_rng}, jnp.zeros((1, *image_shape)), train=False)
  params, batch_stats = variables_["params"], variables_.get("batch_stats", {})
  copy = lambda tree: jax.tree.map(jnp.copy, tree) if ema else {}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                    rng=state_rng, ema_params=copy(params), ema_batch_stats=copy(batch_stats))


def variables(state_or_params, batch_stats=None):
  """Model variables for inference: {"params", "batch_stats"}; the EMA pair when the state keeps one."""
  if isinstance(state_or_params, TrainState):
    state = state_or_params
    if state.ema_params:
      state_or_params, batch_stats = state.ema_params, state.ema_batch_stats
    else:
      state_or_params, batch_stats = state.params, state.batch_stats
  return {"params": state_or_params, **({"batch_stats": batch_stats} if batch_stats else {})}
