"""The optax optimiser, schedule and parameter masks a config describes."""
import inspect
import re

import flax
import jax
import jax.numpy as jnp
import optax

from imgrec.errors import UserError


def schedule(cfg, total_steps, steps_per_epoch):
  """Learning rate per step: linear warm-up, then the configured decay."""
  o = cfg.optim
  warmup = o.warmup_steps if o.warmup_steps > 0 else int(o.warmup_epochs * steps_per_epoch)
  warmup = min(warmup, max(total_steps - 1, 0))
  rest = max(total_steps - warmup, 1)
  if o.schedule == "onecycle":  # its own warm-up phase: warmup/total of the run (default 30%)
    pct = warmup / total_steps if warmup else 0.3
    return optax.cosine_onecycle_schedule(max(total_steps, 2), o.lr, pct_start=max(pct, 1e-3))
  if o.schedule == "cosine":
    decay = optax.cosine_decay_schedule(o.lr, rest)
  elif o.schedule == "constant":
    decay = optax.constant_schedule(o.lr)
  elif o.schedule == "linear":
    decay = optax.linear_schedule(o.lr, 0.0, rest)
  elif o.schedule == "step":
    boundaries = {max(int(e * steps_per_epoch) - warmup, 1): o.decay_factor for e in o.decay_epochs}
    decay = optax.piecewise_constant_schedule(o.lr, boundaries)
  else:
    raise UserError(f"unknown optim.schedule {o.schedule!r}; use cosine, constant, linear, step or onecycle")
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warmup), decay], [warmup])


def param_paths(params):
  """A tree like `params` holding each leaf's path, "stage1_block1/conv1/kernel"."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  return flax.traverse_util.unflatten_dict({k: k for k in flat}, sep="/")


def regex_mask(params, pattern, match=True):
  """Tree of bools: does each param's path match `pattern` (or not, with match=False)?"""
  rx = re.compile(pattern)
  return jax.tree.map(lambda path: bool(rx.search(path)) == match, param_paths(params))


def decay_mask(cfg):
  """Weight decay and L1/L2 apply to params not matched by optim.no_decay (biases, norm scales)."""
  return lambda params: regex_mask(params, cfg.optim.no_decay, match=False) if cfg.optim.no_decay else (
      jax.tree.map(lambda _: True, params))


def penalty(cfg, params):
  """The L1/L2 penalty added to the loss (0 when both are off)."""
  o = cfg.optim
  if not (o.l1 or o.l2):
    return 0.0
  leaves = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(decay_mask(cfg)(params))) if m]
  l2 = sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in leaves)
  l1 = sum(jnp.sum(jnp.abs(p.astype(jnp.float32))) for p in leaves)
  return 0.5 * o.l2 * l2 + o.l1 * l1


def make(cfg, total_steps, steps_per_epoch):
  """(optax transformation, learning-rate schedule) for the config."""
  o = cfg.optim
  lr = schedule(cfg, total_steps, steps_per_epoch)
  factory = getattr(optax, o.name, None)
  if not callable(factory) or o.name.startswith("_") or "learning_rate" not in inspect.signature(factory).parameters:
    known = "sgd, momentum via sgd, adam, adamw, lamb, lion, adafactor, rmsprop, nadam, ..."
    raise UserError(f"unknown optim.name {o.name!r}: not an optax optimiser ({known})")
  params = inspect.signature(factory).parameters
  kwargs = dict(o.kwargs.to_dict())
  if o.name == "sgd":
    kwargs.setdefault("momentum", o.momentum or None)
    kwargs.setdefault("nesterov", o.nesterov)
  decoupled = "weight_decay" in params
  if decoupled:
    kwargs.setdefault("weight_decay", o.weight_decay)
    if "mask" in params:
      kwargs.setdefault("mask", decay_mask(cfg))
  try:
    tx = factory(learning_rate=lr, **kwargs)
  except TypeError as e:
    raise UserError(f"bad optim.kwargs for optax.{o.name}: {e}") from None
  if not decoupled and o.weight_decay:
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=decay_mask(cfg)), tx)
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  if o.freeze:
    labels = lambda p: jax.tree.map(lambda frozen: "frozen" if frozen else "train", regex_mask(p, o.freeze))
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  if cfg.transfer.lr_mults:
    from imgrec import transfer
    tx = transfer.wrap_optimizer(cfg.transfer, tx)  # layer-wise learning-rate multipliers
  return tx, lr


def ema_decay_at(step, decay):
  """EMA decay at optimiser step `step` (0-based): min(decay, (1 + step) / (10 + step)).

  The warm-up keeps the average from dwelling on the random init: with a fixed 0.999, the init
  would still weigh 0.999**1000 = 37% after 1000 steps.
  """
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema, params, decay):
  """One step of the exponential moving average: ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
