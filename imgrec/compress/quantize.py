"""Post-training quantisation: int8 convolutions and dense layers, bf16 weights.

int8: every convolution and dense layer runs with int8 operands and int32 accumulation
(`preferred_element_type=int32`), not simulated in float. Weights are quantised per output
channel, symmetric; each layer's input gets one symmetric scale calibrated as the largest
|activation| seen on a few batches. The model code is unchanged: a Flax method interceptor
replaces Conv/Dense calls (`Int8Model(model).apply` is `model.apply` that way, so the one
`steps.apply` runs it). The quantised variables hold the int8 kernels under "params" and the
scales in a "quant" collection, and are saved as a flat .npz by name (~4x smaller).
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imgrec import steps, workdir as wd
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
  flat = wd.flatten(jax.device_get(variables))
  quant = {}
  for layer, amax in input_amax.items():
    key = f"params/{layer}/kernel"
    w = np.asarray(flat[key], np.float32)
    w_scale = np.maximum(np.abs(w).reshape(-1, w.shape[-1]).max(0), 1e-12) / 127.0
    flat[key] = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
    quant[f"quant/{layer}/w_scale"] = w_scale.astype(np.float32)
    quant[f"quant/{layer}/x_scale"] = np.float32(max(amax, 1e-12) / 127.0)
  return wd.unflatten({**flat, **quant})


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



@dataclasses.dataclass(frozen=True)
class Int8Model:
  """`model` with its Conv/Dense layers run in int8: `.apply(qvariables, x, train=False)` like a Linen module's."""
  model: Any

  def apply(self, qvariables, x, train=False):
    del train  # quantised models run in eval mode only
    return apply_int8(self.model, qvariables, x)


def quantize_workdir(workdir, out, calib_batches=4, batch_size=64):
  """int8-quantises `workdir`'s model, calibrating on a fixed sample of its training split; saves `out` (.npz)."""
  run = wd.restore(workdir, params_only=True)
  variables = jax.device_get(run.variables)
  split = wd.dataset(run).split(run.cfg.data.train_split)
  n = min(len(split), calib_batches * batch_size)
  idx = np.random.default_rng(0).permutation(len(split))[:n]
  batches = [steps.normalize(split.get(np.sort(idx[i:i + batch_size]))[0], run.info["mean"], run.info["std"])
             for i in range(0, n, batch_size)]
  qvariables = quantize_int8(variables, calibrate(run.model, variables, batches))
  wd.save_params(out, qvariables)
  return qvariables


def load_int8(path):
  """The quantised variables saved by `quantize_workdir`."""
  return wd.unflatten(wd.load_params(path))
