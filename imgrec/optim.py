"""The optax optimiser, schedule and parameter masks a config describes: weight-decay and freeze masks by
regex over parameter paths, layer-wise learning-rate multipliers (`transfer.lr_mults`), and the EMA."""
import inspect
import re
from typing import Any, NamedTuple

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
    tx = with_lr_mults(cfg.transfer.lr_mults, tx)
  if o.prune_sparsity > 0:
    tx = optax.chain(tx, magnitude_pruning(o.prune_sparsity, total_steps, o.prune_every))
  return tx, lr


def lr_mult_labels(lr_mults, params):
  """Per-parameter optimiser group: "mult{i}" (the first `(regex, multiplier)` of `lr_mults` matching
  "params/<path>") or "default"."""
  mults = [(re.compile(rx), float(m)) for rx, m in lr_mults]

  def label(path, _):
    name = "params/" + "/".join(str(getattr(k, "key", k)) for k in path)
    for i, (rx, _) in enumerate(mults):
      if rx.search(name):
        return f"mult{i}"
    return "default"
  return jax.tree_util.tree_map_with_path(label, params)


def with_lr_mults(lr_mults, tx):
  """`tx` followed by scaled updates for the lr_mults groups (layer-wise learning rates)."""
  for item in lr_mults:
    if len(item) != 2:
      raise UserError(f"transfer.lr_mults entries are (regex, multiplier) pairs, got {item!r}")
  groups = {"default": optax.identity()}
  groups.update({f"mult{i}": optax.scale(float(m)) for i, (_, m) in enumerate(lr_mults)})
  return optax.chain(tx, optax.multi_transform(groups, lambda p: lr_mult_labels(lr_mults, p)))


def ema_decay_at(step, decay):
  """EMA decay at optimiser step `step` (0-based): min(decay, (1 + step) / (10 + step)).

  The warm-up keeps the average from dwelling on the random init: with a fixed 0.999, the init
  would still weigh 0.999**1000 = 37% after 1000 steps.
  """
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema, params, decay):
  """One step of the exponential moving average: ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


# ---------------------------------------------------------------------------- magnitude pruning

def prunable(params):
  """Pruned tensors: kernels (ndim > 1); biases and norm parameters stay dense."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def magnitude_masks(params, sparsity):
  """Global magnitude pruning: the `sparsity` fraction of smallest |w| over all kernels is masked."""
  which = prunable(params)
  values = [jnp.abs(p).ravel() for p, w in zip(jax.tree.leaves(params), jax.tree.leaves(which)) if w]
  allw = jnp.concatenate(values)
  k = jnp.round(jnp.asarray(sparsity, jnp.float32) * allw.size).astype(jnp.int32)  # traced: one compile
  threshold = jnp.where(k > 0, jnp.sort(allw)[jnp.maximum(k - 1, 0)], -jnp.inf)
  return jax.tree.map(lambda p, w: (jnp.abs(p) > threshold).astype(p.dtype) if w else jnp.ones_like(p),
                      params, which)


def sparsity_at(step, total, final, begin_frac=0.0, end_frac=0.75):
  """Gradual schedule (cubic ramp, Zhu & Gupta 2017) from 0 to `final` over [begin, end] of `total` steps."""
  begin, end = int(begin_frac * total), max(int(end_frac * total), 1)
  t = jnp.clip((step - begin) / max(end - begin, 1), 0.0, 1.0)
  return final * (1.0 - (1.0 - t) ** 3)


class PruningState(NamedTuple):
  count: jax.Array
  masks: Any


def magnitude_pruning(final_sparsity, total_steps, every=10):
  """Gradual global magnitude pruning as the optimiser's last transformation (`optim.prune_sparsity`).

  Every `every` steps the masks are recomputed from the current weights at the scheduled sparsity
  (`sparsity_at`: reached at 75% of the run, then held); each update sets the masked weights to zero,
  so they stay zero, and the trained model is sparse at the end of the ordinary training loop.
  """
  def init(params):
    return PruningState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.ones_like, params))

  def update(updates, state, params):
    masks = jax.lax.cond(state.count % every == 0,
                         lambda: magnitude_masks(params, sparsity_at(state.count, total_steps, final_sparsity)),
                         lambda: state.masks)
    updates = jax.tree.map(lambda p, u, m: (p + u) * m - p, params, updates, masks)
    return updates, PruningState(state.count + 1, masks)
  return optax.GradientTransformation(init, update)
