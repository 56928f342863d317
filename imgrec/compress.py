"""Compression of a trained model: int8 post-training quantisation, bf16 weights, magnitude pruning.

int8: every convolution and dense layer runs with int8 operands and int32 accumulation
(`preferred_element_type=int32`), not simulated in float. Weights are quantised per output
channel, symmetric; each layer's input gets one symmetric scale calibrated as the largest
|activation| seen on a few batches. The model code is unchanged: a Flax method interceptor
replaces Conv/Dense calls. The quantised variables hold the int8 kernels under "params" and the
scales in a "quant" collection, and are saved as a flat .npz by name (~4x smaller).
"""
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from imgrec import transfer
from imgrec.errors import UserError
from imgrec.models import layers


def _quantisable(module):
  return isinstance(module, (nn.Conv, nn.Dense, layers.Conv)) and not isinstance(module, nn.ConvTranspose)


def _name(module):
  return "/".join(module.path)


def calibrate(model, variables, batches):
  """{layer path: max |input|} over `batches` (float NHWC arrays), for every Conv/Dense layer."""
  def amax(variables, x):
    found = {}

    def record(next_fun, args, kwargs, ctx):
      if ctx.method_name == "__call__" and _quantisable(ctx.module):
        found[_name(ctx.module)] = jnp.max(jnp.abs(args[0])).astype(jnp.float32)
      return next_fun(*args, **kwargs)
    with nn.intercept_methods(record):
      model.apply(variables, x, train=False)
    return found

  amax = jax.jit(amax)
  result = None
  for x in batches:
    found = jax.device_get(amax(variables, x))
    result = found if result is None else {k: max(result[k], found[k]) for k in found}
  if not result:
    raise UserError("calibration found no Conv/Dense layer to quantise (or no calibration batch)")
  return {k: float(v) for k, v in result.items()}


def quantize_int8(variables, input_amax):
  """Quantised variables: int8 kernels (per-output-channel symmetric) + a "quant" collection of scales."""
  flat = transfer.flatten(jax.device_get(variables))
  quant = {}
  for layer, amax in input_amax.items():
    key = f"params/{layer}/kernel"
    w = np.asarray(flat[key], np.float32)
    w_scale = np.maximum(np.abs(w).reshape(-1, w.shape[-1]).max(0), 1e-12) / 127.0
    flat[key] = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
    quant[f"quant/{layer}/w_scale"] = w_scale.astype(np.float32)
    quant[f"quant/{layer}/x_scale"] = np.float32(max(amax, 1e-12) / 127.0)
  return transfer.unflatten({**flat, **quant})


def _conv_padding(padding, ndim):
  if isinstance(padding, str):
    if padding.upper() in ("SAME", "VALID"):
      return padding.upper()
    raise UserError(f"int8 quantisation supports SAME/VALID/explicit conv padding, not {padding!r}")
  if isinstance(padding, int):
    return [(padding, padding)] * ndim
  return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def _tuple(v, n):
  if v is None:
    return (1,) * n
  return (v,) * n if isinstance(v, int) else tuple(v)


def int8_layer(module, x):
  """One Conv/Dense layer on int8 operands with int32 accumulation; float32 out."""
  x_scale = module.get_variable("quant", "x_scale")
  w_scale = module.get_variable("quant", "w_scale")
  kernel = module.get_variable("params", "kernel")  # int8
  xq = jnp.clip(jnp.round(x.astype(jnp.float32) / x_scale), -127, 127).astype(jnp.int8)
  if isinstance(module, nn.Dense):
    acc = jax.lax.dot_general(xq, kernel, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
  else:
    n = kernel.ndim - 2
    if x.ndim != n + 2:
      raise UserError(f"int8 conv expects a batched input of rank {n + 2}, got shape {x.shape}")
    if n == 2 and module.feature_group_count == 1 and _tuple(module.input_dilation, n) == (1, 1):
      acc = layers.conv2d_int8(xq, kernel, _tuple(module.strides, n), _conv_padding(module.padding, n),
                               _tuple(module.kernel_dilation, n))
    else:
      acc = jax.lax.conv_general_dilated(
          xq, kernel, _tuple(module.strides, n), _conv_padding(module.padding, n),
          lhs_dilation=_tuple(module.input_dilation, n), rhs_dilation=_tuple(module.kernel_dilation, n),
          dimension_numbers=("NHWC", "HWIO", "NHWC") if n == 2 else None,
          feature_group_count=module.feature_group_count, preferred_element_type=jnp.int32)
  y = acc.astype(jnp.float32) * (x_scale * w_scale)
  if module.use_bias:
    y = y + module.get_variable("params", "bias")
  return y.astype(module.dtype or jnp.float32)


def _int8_interceptor(next_fun, args, kwargs, ctx):
  if ctx.method_name == "__call__" and _quantisable(ctx.module) and ctx.module.has_variable("quant", "x_scale"):
    return int8_layer(ctx.module, args[0])
  return next_fun(*args, **kwargs)


def apply_int8(model, qvariables, x):
  """`model.apply` in eval mode with the quantised variables: int8 Conv/Dense, everything else float."""
  with nn.intercept_methods(_int8_interceptor):
    return model.apply(qvariables, x, train=False)


def cast_bf16(variables):
  """Float weights stored in bfloat16 (half the bytes); cast back up with `jax.tree.map(f32, ...)` to run."""
  return jax.tree.map(lambda v: np.asarray(v).astype(jnp.bfloat16) if np.issubdtype(np.asarray(v).dtype, np.floating)
                      else np.asarray(v), jax.device_get(variables))


def to_float32(variables):
  return jax.tree.map(lambda v: jnp.asarray(v, jnp.float32) if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating)
                      else jnp.asarray(v), variables)


# ------------------------------------------------------------------------- magnitude pruning

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
  t = min(max((step - begin) / max(end - begin, 1), 0.0), 1.0)
  return final * (1.0 - (1.0 - t) ** 3)


def sparsity_of(params):
  which = prunable(params)
  leaves = [np.asarray(p) for p, w in zip(jax.tree.leaves(params), jax.tree.leaves(which)) if w]
  return float(sum((p == 0).sum() for p in leaves) / sum(p.size for p in leaves))


def prune_finetune(workdir, out_workdir, sparsity, steps, lr_scale=0.3, mask_every=10):
  """Global magnitude pruning to `sparsity` on a gradual schedule while fine-tuning `steps` steps.

  Masks are recomputed every `mask_every` steps at the scheduled sparsity (reached at 75% of
  the run, then held); masked weights are zeroed after every update, so they stay zero. The
  result is a normal workdir (`imgrec eval` / `imgrec export` work on it) with a 1-checkpoint history.
  """
  import os
  import json
  import tqdm
  from imgrec import checkpoint, config as config_lib, parallel, train
  from imgrec.data import pipeline, sources
  if not 0 < sparsity < 1:
    raise UserError(f"sparsity must be in (0, 1), got {sparsity}")
  cfg, info, _, restored = train.restore(workdir)
  cfg.steps, cfg.epochs = int(steps), 0.0
  cfg.optim.lr *= lr_scale
  cfg.optim.warmup_epochs = 0.0
  cfg.transfer.init_from = ""
  mesh = parallel.make_mesh()
  model, tx, _, _, _, shardings = train.build(cfg, info, mesh)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=restored.params, batch_stats=restored.batch_stats,
                           opt_state=tx.init(restored.params), rng=restored.rng)
  step_fn = train.make_train_step(model, tx, info["mean"], info["std"])

  @jax.jit
  def masked_step(state, batch, masks):
    state, metrics = step_fn(state, batch)
    return state.replace(params=jax.tree.map(jnp.multiply, state.params, masks)), metrics

  masks_fn = jax.jit(magnitude_masks)
  ds = sources.load(cfg.data)
  split = ds.split(cfg.data.train_split)
  masks = None
  for step, batch in tqdm.tqdm(pipeline.train_batches(split, cfg.batch_size, cfg.seed, 0, cfg.steps,
                                                      parallel.batch_sharding(mesh), 0),
                               total=cfg.steps, desc=f"prune {sparsity:.0%}", unit="step"):
    if masks is None or step % mask_every == 0:
      masks = masks_fn(state.params, sparsity_at(step, cfg.steps, sparsity))
    state, _ = masked_step(state, batch, masks)
  state = state.replace(params=jax.tree.map(jnp.multiply, state.params, masks_fn(state.params, sparsity)))
  os.makedirs(out_workdir, exist_ok=True)
  config_lib.save(cfg, os.path.join(out_workdir, "config.json"))
  with open(os.path.join(out_workdir, "dataset.json"), "w") as f:
    json.dump(info, f, indent=2)
  mngr = checkpoint.manager(out_workdir, 1)
  checkpoint.save(mngr, int(state.step), state)
  mngr.wait_until_finished()
  mngr.close()
  return state


def accuracy(model, variables, split, mean, std, apply_fn=None, batch_size=256):
  """Test accuracy of `variables` on a split, through `apply_fn(variables, x)` (default: float model)."""
  from imgrec import train
  apply_fn = apply_fn or (lambda v, x: model.apply(v, x, train=False))
  run = jax.jit(lambda v, images: jnp.argmax(apply_fn(v, train.normalize(images, mean, std)), -1))
  correct = 0
  for start in range(0, len(split), batch_size):
    images, labels = split.get(np.arange(start, min(start + batch_size, len(split))))
    correct += int(np.sum(np.asarray(run(variables, images)) == labels))
  return correct / len(split)


def quantize_workdir(workdir, out, calib_batches=4, batch_size=64):
  """int8-quantises `workdir`'s latest checkpoint, calibrating on its first training batches; saves `out` (.npz)."""
  from imgrec import train
  from imgrec.data import sources
  cfg, info, model, state = train.restore(workdir)
  variables = jax.device_get(train.variables(state))
  split = sources.load(cfg.data).split(cfg.data.train_split)
  n = min(len(split), calib_batches * batch_size)
  idx = np.random.default_rng(0).permutation(len(split))[:n]
  batches = [train.normalize(split.get(np.sort(idx[i:i + batch_size]))[0], info["mean"], info["std"])
             for i in range(0, n, batch_size)]
  qvariables = quantize_int8(variables, calibrate(model, variables, batches))
  transfer.save_params(out, qvariables)
  return qvariables


def load_int8(path):
  """The quantised variables saved by `quantize_workdir`."""
  return transfer.unflatten(transfer.load_source(path))


def compress_workdir(workdir, method, out, sparsity=0.9, steps=200):
  """One compression method on a workdir; returns {method, accuracy, accuracy_fp32, bytes, bytes_fp32}.

  int8 / bf16 write a variables .npz to `out`; prune (magnitude) and channels (structured,
  imgrec/channel_prune.py) write a new workdir to `out`, with its variables also as out/params.npz.
  """
  import os
  import tempfile
  from imgrec import train
  from imgrec.data import sources
  cfg, info, model, state = train.restore(workdir)
  variables = jax.device_get(train.variables(state))
  test = sources.load(cfg.data).split(cfg.data.eval_split)
  acc = lambda v, fn=None: accuracy(model, v, test, info["mean"], info["std"], fn)
  with tempfile.TemporaryDirectory() as tmp:
    transfer.save_params(os.path.join(tmp, "fp32.npz"), variables)
    bytes_fp32 = os.path.getsize(os.path.join(tmp, "fp32.npz"))
  result = {"method": method, "accuracy_fp32": acc(variables), "bytes_fp32": bytes_fp32}
  if method == "int8":
    q = quantize_workdir(workdir, out)
    result["accuracy"] = acc(q, lambda v, x: apply_int8(model, v, x))
  elif method == "bf16":
    transfer.save_params(out, cast_bf16(variables))
    result["accuracy"] = acc(to_float32(transfer.unflatten(transfer.load_source(out))))
  elif method == "prune":
    pruned = prune_finetune(workdir, out, sparsity, steps)
    result["accuracy"] = acc(train.variables(pruned))
    result["sparsity"] = sparsity_of(pruned.params)
    transfer.save_params(os.path.join(out, "params.npz"), jax.device_get(train.variables(pruned)), compressed=True)
    out = os.path.join(out, "params.npz")
  elif method == "channels":
    from imgrec import channel_prune
    r = channel_prune.prune_workdir(workdir, out, sparsity, steps)
    _, _, small, small_state = train.restore(out)
    small_vars = jax.device_get(train.variables(small_state))
    result["accuracy"] = acc(small_vars, lambda v, x: small.apply(v, x, train=False))
    result.update(params=r["params_after"], params_fp32=r["params_before"], widths=r["kwargs"])
    out = os.path.join(out, "params.npz")
    transfer.save_params(out, small_vars)  # uncompressed, as fp32.npz: the bytes saved are real
  else:
    raise UserError(f"unknown compression method {method!r}; use int8, bf16, prune or channels")
  result["bytes"] = os.path.getsize(out)
  return result


# ------------------------------------------------------------------------- distillation

def kd_loss(student_logits, teacher_logits, targets, alpha, temperature):
  """alpha * CE(targets) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean.

  `targets` are the train step's soft labels (one-hot, smoothed or mixed)."""
  import optax
  t = temperature
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
  log_p_t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / t)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1).mean()
  ce = jnp.mean(optax.softmax_cross_entropy(student_logits.astype(jnp.float32), targets))
  return alpha * ce + (1 - alpha) * t**2 * kl


def distillation_loss(dcfg, info):
  """The train step's loss(logits, labels, x) with the teacher (restored from dcfg.teacher) run on x."""
  from imgrec import train
  _, t_info, t_model, t_state = train.restore(dcfg.teacher)
  if t_info["class_names"] != info["class_names"]:
    raise UserError(f"distill.teacher {dcfg.teacher} predicts {len(t_info['class_names'])} classes "
                    f"{t_info['class_names'][:5]}..., this run has {info['class_names'][:5]}...: they must match")
  if not 0 <= dcfg.alpha <= 1 or dcfg.temperature <= 0:
    raise UserError(f"distill.alpha must be in [0, 1] and distill.temperature > 0, got {dcfg.alpha}, "
                    f"{dcfg.temperature}")
  t_vars = train.variables(t_state)
  # The teacher sees the student's normalised input re-expressed in its own normalisation.
  scale = jnp.asarray(info["std"], jnp.float32) / jnp.asarray(t_info["std"], jnp.float32)
  shift = (jnp.asarray(info["mean"], jnp.float32) - jnp.asarray(t_info["mean"], jnp.float32)) / jnp.asarray(
      t_info["std"], jnp.float32)

  def loss(logits, targets, x):
    teacher_logits = t_model.apply(t_vars, x * scale + shift, train=False)
    return kd_loss(logits, teacher_logits, targets, dcfg.alpha, dcfg.temperature)
  return loss
