"""Building blocks shared by the model zoo.

Pooling here never returns an empty map: a window larger than its (padded) input pools
the whole input instead, so every family accepts 28x28 images as well as 224x224 ones.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from imgrec.models import layers
from imgrec.models.layers import Conv

SMALL_INPUT = 64  # `stem="auto"` picks the small-image stem at or below this many pixels


def pick_stem(stem, x):
  """Resolves `stem="auto"` to "small" (<= 64 px: no early downsampling) or "imagenet"."""
  if stem == "auto":
    return "small" if max(x.shape[1], x.shape[2]) <= SMALL_INPUT else "imagenet"
  if stem not in ("small", "imagenet"):
    raise ValueError(f"stem must be 'auto', 'small' or 'imagenet', got {stem!r}")
  return stem


def make_divisible(value, divisor=8):
  """Rounds a channel count to a multiple of `divisor`, never going below 90% of it (MobileNet rule)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def batch_norm(train, dtype, param_dtype, momentum=0.9, epsilon=1e-5):
  """BatchNorm factory: batch statistics (and running-average updates) in train, running averages in eval."""
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=momentum, epsilon=epsilon,
                           dtype=dtype, param_dtype=param_dtype)


def pool(x, kind, window, stride, padding=0, ceil=False):
  """torch-style max/avg pooling (symmetric `padding`, floor or ceil mode) over NHWC."""
  h, w = x.shape[1:3]
  if min(h, w) + 2 * padding < window:  # window bigger than the map: pool all of it
    return (jnp.max if kind == "max" else jnp.mean)(x, axis=(1, 2), keepdims=True)
  pads = []
  for size in (h, w):
    hi = padding
    if ceil:
      out = -(-(size + 2 * padding - window) // stride) + 1
      if (out - 1) * stride >= size + padding:  # the last window must start inside the input
        out -= 1
      hi = max(padding, (out - 1) * stride + window - size - padding)
    pads.append((padding, hi))
  if kind == "max":
    return layers.max_pool(x, (window, window), (stride, stride), pads)
  return nn.avg_pool(x, (window, window), (stride, stride), pads, count_include_pad=not ceil)


def adaptive_avg_pool(x, out_h, out_w):
  """torch's AdaptiveAvgPool2d: bin i spans [floor(i*H/out), ceil((i+1)*H/out)); small maps repeat."""
  def along(x, axis, out):
    size = x.shape[axis]
    if size == out:
      return x
    if size % out == 0:
      shape = x.shape[:axis] + (out, size // out) + x.shape[axis + 1:]
      return x.reshape(shape).mean(axis + 1)
    bins = [jax.lax.slice_in_dim(x, i * size // out, -(-(i + 1) * size // out), axis=axis).mean(axis, keepdims=True)
            for i in range(out)]
    return jnp.concatenate(bins, axis)
  return along(along(x, 1, out_h), 2, out_w)


def drop_path(module, x, rate, train):
  """Stochastic depth: drops the whole residual branch per example (rng stream "dropout")."""
  if not train or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


class SqueezeExcite(nn.Module):
  """Channel gating: global pool -> fc1 (1x1 conv) -> act -> fc2 -> gate, times the input."""
  squeeze: int
  act: Callable = nn.relu
  gate: Callable = nn.sigmoid
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = self.act(Conv(self.squeeze, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(s))
    s = self.gate(Conv(x.shape[-1], (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(s))
    return x * s
