"""The pure functions of a model, and the one loop that streams a split through one of them.

  train_step(state, batch[, aux]) -> (state, metrics)     make_train_step(..., the task's inputs and loss)
      the task-agnostic skeleton: accumulation, penalties, the optimiser, EMA, grad_norm;
      metrics["finite"]: loss and gradient norm are finite, checked on device (the loop reads it without waiting)
  all_finite(tree) -> bool: every float leaf is finite (checked before a checkpoint is written)
  apply(model, variables, uint8 images, mean, std) -> the model's outputs in eval mode: the one forward pass
      under every task's predict and eval fn (imgrec/tasks), robustness, explain and compress
  stream(fn, variables, split, ...) -> fn's per-example outputs over a whole split, in order, and its "sums"
      added up over the batches

Images arrive as uint8 NHWC; conversion to float, normalisation and augmentation happen on device, inside the
jitted function (augmentation and targets in the task's `inputs`, imgrec/tasks).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from imgrec import optim, parallel
from imgrec.data import pipeline
from imgrec.state import variables


def to_float(images):
  """uint8 -> float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def standardize(x, mean, std, dtype=jnp.float32):
  return ((x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)).astype(dtype)


def normalize(images, mean, std, dtype=jnp.float32):
  """uint8 NHWC -> standardised float, on device (host work and transfers stay uint8)."""
  return standardize(to_float(images), mean, std, dtype)


def apply(model, variables, images, mean, std):
  """uint8 NHWC images -> the model's outputs in eval mode (a task's predict decodes them)."""
  return model.apply(variables, normalize(images, mean, std), train=False)


def make_train_step(model, tx, mean, std, inputs, loss, cfg):
  """The pure training step, for any task: `train_step(state, batch[, aux]) -> (state, metrics)`.

  The task gives `inputs(rng, batch) -> (float images in [0, 1] after augmentation, targets pytree)` and
  `loss(outputs, targets, x, aux) -> (scalar loss, {train metric: scalar})`, `x` being the model's standardised
  input and `aux` the step's optional third argument (classification's distillation teacher variables: an
  input of the compiled program rather than constants baked into it). `cfg` adds penalties, accumulation and
  EMA. metrics: the loss (without penalties), the task's metrics, "grad_norm", "finite".

  With `optim.accum_steps` > 1 the batch runs as that many micro-batches (every leaf of the targets split
  alike) and their gradients and metrics are averaged. BatchNorm normalises each micro-batch by its own
  statistics (as any accumulation does); the running statistics are updated once per step, with the mean of
  the micro-batches' statistics.
  """
  accum, ema_decay = cfg.optim.accum_steps, cfg.optim.ema_decay

  def loss_fn(params, batch_stats, x, targets, rng, aux):
    outputs, updates = model.apply(variables(params, batch_stats), x, train=True,
                                   rngs={"dropout": rng}, mutable=["batch_stats"])
    value, task_metrics = loss(outputs, targets, x, aux)
    return value + optim.penalty(cfg, params), ({"loss": value, **task_metrics},
                                                updates.get("batch_stats", batch_stats))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch, aux=None):
    rng = jax.random.fold_in(state.rng, state.step)
    aug_rng, drop_rng = jax.random.split(rng)
    x, targets = inputs(aug_rng, batch)
    x = standardize(x, mean, std)
    if accum == 1:
      (_, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, x, targets, drop_rng, aux)
    else:
      # Micro-batch i takes every accum-th example, so each stays spread over all devices.
      split = lambda a: jnp.swapaxes(a.reshape((a.shape[0] // accum, accum) + a.shape[1:]), 0, 1)
      micro = (split(x), jax.tree.map(split, targets), jnp.arange(accum))
      add = lambda a, b: jax.tree.map(jnp.add, a, b)

      def body(carry, inputs_i):
        mx, mt, i = inputs_i
        (_, (m, new_stats)), g = grad_fn(state.params, state.batch_stats, mx, mt, jax.random.fold_in(drop_rng, i),
                                         aux)
        return add(carry, (g, new_stats, m)), None

      zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
      first = (micro[0][0], jax.tree.map(lambda a: a[0], micro[1]))
      metrics = jax.eval_shape(lambda: grad_fn(state.params, state.batch_stats, *first, drop_rng, aux))[0][1][0]
      (grads, batch_stats, metrics), _ = jax.lax.scan(body, zeros((state.params, state.batch_stats, metrics)), micro)
      grads, batch_stats, metrics = jax.tree.map(lambda a: a / accum, (grads, batch_stats, metrics))
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, param_updates)
    ema_params, ema_stats = state.ema_params, state.ema_batch_stats
    if ema_decay:
      decay = optim.ema_decay_at(state.step, ema_decay)
      ema_params, ema_stats = optim.ema_update(ema_params, params, decay), optim.ema_update(ema_stats, batch_stats,
                                                                                            decay)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                              ema_params=ema_params, ema_batch_stats=ema_stats)
    grad_norm = optax.tree.norm(grads)
    metrics = {**metrics, "grad_norm": grad_norm,
               "finite": jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)}
    return new_state, metrics
  return train_step


@jax.jit
def all_finite(tree):
  """Whether every floating-point leaf of `tree` is finite (integer leaves, like step counters, always are)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


@functools.lru_cache(maxsize=32)
def _jitted(fn, mesh):
  """One compiled program per function (robustness streams the same one over many corruptions); the outputs
  come back replicated, so every process holds the whole split's."""
  return jax.jit(lambda v, b: (fn(v, b), b["mask"]), out_shardings=parallel.replicated(mesh))


def stream(fn, variables, split, batch_size, mesh, prefetch=2, transform=None, desc="eval"):
  """`fn(variables, batch)`'s per-example outputs (a host numpy pytree) over every example of `split`, in order.

  `batch` is the split's features and "mask", with the global batch sharded over the devices like training's; the
  last batch is padded and its padding dropped here. When `fn` returns a dict with "sums" (a task that reduces
  as it goes: a confusion matrix), that pytree is added up over the batches on device instead of gathered, and
  comes back under "sums"; `fn` masks the padding out of it itself. On several devices and hosts the outputs
  come back replicated, so every process holds the whole split's. `transform(images, batch_index) -> images`
  alters each process-local uint8 batch on the host first (corruptions), on the prefetch thread.
  """
  step = _jitted(fn, mesh)
  batches = pipeline.eval_batches(split, batch_size, parallel.batch_sharding(mesh), prefetch, transform=transform)
  outs, sums = [], None
  for batch in tqdm.tqdm(batches, total=-(-len(split) // batch_size), desc=desc, unit="batch", leave=False,
                         disable=jax.process_index() != 0):
    out, mask = step(variables, batch)
    if isinstance(out, dict) and "sums" in out:
      out = dict(out)
      part = out.pop("sums")
      sums = part if sums is None else jax.tree.map(jnp.add, sums, part)
    outs.append((out, mask))
  outs, masks = zip(*jax.device_get(outs))
  mask = np.concatenate(masks)
  gathered = jax.tree.map(lambda *xs: np.concatenate(xs)[mask], *outs)
  return gathered if sums is None else {**gathered, "sums": jax.device_get(sums)}
