"""Layers shared by the model families.

`Conv` has nn.Conv's interface and parameter names (`kernel` HWIO, `bias`), so every
model, converter and pruning tool treats it as a plain convolution. Only the convolution
it calls differs: `conv2d` below. On GPU/TPU that is plain `lax.conv_general_dilated`.
On CPU it has a hand-written gradient, because XLA:CPU's convolution gradients are slow:
the kernel gradient runs 2-6x slower than the forward pass, and grouped and depthwise
convolutions are slow in every direction (up to 35x). There, `conv2d` keeps XLA's dense
forward pass and the gradients it does well, and computes the rest as im2col + matmul
(or multiply-adds, for depthwise). The patches are built and used a few images at a time
inside a `lax.scan`, so they stay in cache and are never all held in memory.

`max_pool` is nn.max_pool's counterpart: XLA:CPU's max-pool gradient (select-and-scatter)
is ~15x slower than the same pooling written as a max over the window's strided views.
`conv2d_int8` (used by `imgrec.compress`) likewise replaces XLA:CPU's int8 convolution, which
has shapes 3-8x slower than im2col + one int8 matmul.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# "auto" uses "im2col" where the program runs on CPU and "lax" elsewhere, chosen per platform when the
# program is lowered (`lax.platform_dependent`), so a CPU host that exports for cuda or tpu gets plain
# lax convolutions there. "im2col" or "lax" forces one of them. It is read when a function is traced,
# so set it before the first call of a jitted function.
IMPL = "auto"
# Size of the patches built per scan step, so that they are used while still in cache. 1-2 MiB measured
# best (2-core Zen 4, 1 MiB L2 per core); the whole batch at once runs 2-3x slower. Steps grow to the
# kernel's size where that is larger, so that adding up each step's kernel gradient stays cheap.
CHUNK_BYTES = 1 << 20
_DN = ("NHWC", "HWIO", "NHWC")


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


def _per_platform(impl, cpu_fn, other_fn, *args):
  """`cpu_fn(*args)` in programs lowered for CPU, `other_fn(*args)` for every other platform (`impl`, default
  `IMPL`, "im2col" or "lax" forces one). Both give the same results."""
  impl = impl or IMPL
  if impl == "im2col":
    return cpu_fn(*args)
  if impl == "lax":
    return other_fn(*args)
  return lax.platform_dependent(*args, cpu=cpu_fn, default=other_fn)


def max_pool(x, window, strides=None, padding="VALID", impl=None):
  """nn.max_pool over NHWC `x` (same arguments and result). `padding` is "VALID", "SAME" or pairs.

  On CPU the window's kh*kw strided views are compared elementwise, so the gradient is a few
  cheap selects instead of select-and-scatter (measured faster than a reshape + max too).
  """
  window, strides = _pair(window), _pair(strides or window)
  if x.ndim != 4:
    return nn.max_pool(x, window, strides, padding)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
  else:
    pads = [tuple(p) for p in padding]
  views = lambda x: functools.reduce(jnp.maximum, _taps(x, window, (strides, pads, (1, 1)), pad_value=-jnp.inf))
  return _per_platform(impl, views, lambda x: nn.max_pool(x, window, strides, padding), x)


def conv2d(x, kernel, strides=1, padding="SAME", feature_group_count=1, kernel_dilation=1,
           precision=None, impl=None):
  """Convolves NHWC `x` with HWIO `kernel`; same result as `lax.conv_general_dilated`.

  `padding` is "SAME", "VALID", an int, or pairs [(lo, hi), (lo, hi)]. `impl` overrides `IMPL`.
  """
  strides, dilation = _pair(strides), _pair(kernel_dilation)
  kh, kw, cig, cout = kernel.shape
  pads = _resolve_pads(x.shape, kernel.shape, strides, dilation, padding)
  lax_conv = lambda x, kernel: lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation,
                                                        dimension_numbers=_DN, feature_group_count=feature_group_count,
                                                        precision=precision)
  if min(min(p) for p in pads) < 0:  # negative padding (cropping): rare, leave it to lax
    return lax_conv(x, kernel)

  def cpu_conv(x, kernel):
    dtype, groups = jnp.result_type(x, kernel), feature_group_count
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if cig == 1 and groups > 1 and cout > groups:
      # Depthwise with a channel multiplier: output channel o reads input channel o // multiplier,
      # so repeating the input channels makes it a plain depthwise convolution.
      x = jnp.repeat(x, cout // groups, axis=-1)
      groups = cout
    return _conv(x, kernel, (strides, pads, dilation, groups, precision))
  return _per_platform(impl, cpu_conv, lax_conv, x, kernel)


def conv2d_int8(x, kernel, strides=1, padding="SAME", kernel_dilation=1, impl=None):
  """int8 NHWC `x` * int8 HWIO `kernel` -> int32 (ungrouped): `lax.conv_general_dilated` with
  preferred_element_type=int32. On CPU it is im2col + one int8 matmul instead, because XLA:CPU's int8
  convolution has slow shapes (a 3x3 16->16 conv at 28x28: 27.3 ms vs 3.6 ms at batch 64, 3.3x at batch 1)."""
  strides, dilation = _pair(strides), _pair(kernel_dilation)
  pads = _resolve_pads(x.shape, kernel.shape, strides, dilation, padding)
  lax_conv = lambda x, kernel: lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation,
                                                        dimension_numbers=_DN, preferred_element_type=jnp.int32)
  if min(min(p) for p in pads) < 0:
    return lax_conv(x, kernel)

  def cpu_conv(x, kernel):
    cols = jnp.concatenate(_taps(x, kernel.shape, (strides, pads, dilation)), axis=-1)  # (n, ho, wo, kh*kw*cin)
    return lax.dot_general(cols, kernel.reshape(-1, kernel.shape[-1]), (((3,), (0,)), ((), ())),
                           preferred_element_type=jnp.int32)
  return _per_platform(impl, cpu_conv, lax_conv, x, kernel)


def _resolve_pads(x_shape, k_shape, strides, dilation, padding):
  """((lo, hi), (lo, hi)) from "SAME"/"VALID", an int, or pairs."""
  if isinstance(padding, str):
    window = ((k_shape[0] - 1) * dilation[0] + 1, (k_shape[1] - 1) * dilation[1] + 1)
    pads = lax.padtype_to_pads(x_shape[1:3], window, strides, padding)
  else:
    pads = [(p, p) if isinstance(p, int) else p for p in _pair(padding)]
  return tuple((int(lo), int(hi)) for lo, hi in pads)


def _out_size(x_shape, k_shape, cfg):
  strides, pads, dilation = cfg[:3]
  return tuple((size + lo + hi - (k - 1) * d - 1) // s + 1
               for size, (lo, hi), k, d, s in zip(x_shape[1:3], pads, k_shape[:2], dilation, strides))


def _taps(x, k_shape, cfg, pad_value=0):
  """im2col, one (n, ho, wo, C) slice of the padded input per kernel tap, row-major over (kh, kw)."""
  (sh, sw), pads, (dh, dw) = cfg[:3]
  n, _, _, c = x.shape
  ho, wo = _out_size(x.shape, k_shape, cfg)
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=pad_value)
  return [lax.slice(xp, (0, a, b, 0), (n, a + (ho - 1) * sh + 1, b + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
          for a in range(0, k_shape[0] * dh, dh) for b in range(0, k_shape[1] * dw, dw)]


def _f32(a):  # at least float32: bf16 widens, float64 stays
  return a.astype(jnp.promote_types(a.dtype, jnp.float32))


# The three contractions, with taps stacked into patches p (n,h,w,t,g,i), kernel k (t,i,g,o) and
# output y (n,h,w,g,o). They run in float32, as XLA:CPU's own bf16 convolutions do (their results are
# a float32 convolution's, rounded once); chunks are small, so the casts are cheap.
# Depthwise (i = o = 1) has nothing worth a matmul: it multiplies and adds tap by tap, which XLA fuses.
def _depthwise(k):
  return k.shape[1] == 1 and k.shape[3] == 1


def _forward(taps, k, precision):
  if _depthwise(k):
    return sum(_f32(tap) * _f32(k[t, 0, :, 0]) for t, tap in enumerate(taps))
  n, h, w, c = taps[0].shape
  p = jnp.stack(taps, axis=3).reshape(n, h, w, len(taps), k.shape[2], -1)
  y = jnp.einsum("nhwtgi,tigo->nhwgo", _f32(p), _f32(k), precision=precision)
  return y.reshape(n, h, w, -1)


def _kernel_grad(taps, dy, k, precision):
  if _depthwise(k):
    return jnp.stack([jnp.sum(_f32(tap) * _f32(dy), axis=(0, 1, 2)) for tap in taps])[:, None, :, None]
  n, h, w, c = taps[0].shape
  p = jnp.stack(taps, axis=3).reshape(n, h, w, len(taps), k.shape[2], -1)
  dy = dy.reshape(n, h, w, k.shape[2], -1)
  return jnp.einsum("nhwtgi,nhwgo->tigo", _f32(p), _f32(dy), precision=precision)


def _taps_grad(dy, k, precision):
  if _depthwise(k):
    return [_f32(dy) * _f32(k[t, 0, :, 0]) for t in range(k.shape[0])]
  n, h, w, _ = dy.shape
  dy = dy.reshape(n, h, w, k.shape[2], -1)
  dp = jnp.einsum("nhwgo,tigo->nhwtgi", _f32(dy), _f32(k), precision=precision)
  return list(dp.reshape(n, h, w, k.shape[0], -1).transpose(3, 0, 1, 2, 4))


def _over_batch(fn, k, arrays, per_image_bytes):
  """Runs `fn(k, *chunks) -> (y, dk)` over the batch, a few images per `lax.scan` step.

  Returns the steps' `y` joined along the batch and the sum of their `dk` (either may be None).
  A batch sharded over explicit mesh axes (sharding in the types: `jax.make_mesh`'s default)
  runs as a shard_map: each device loops over its own shard, then the `dk` are summed.
  """
  sharding = jax.typeof(arrays[0]).sharding
  axes = sharding.spec[0] if len(sharding.spec) else None
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  images = max(CHUNK_BYTES, 4 * k.size) // per_image_bytes
  if not axes:
    # Auto sharding is not visible here; with several devices, keep chunks divisible by their
    # number, so that the partitioner can keep a batch split across them without gathering it.
    return _scan_chunks(fn, k, arrays, images, jax.device_count())

  def per_device(k, *arrays):
    y, dk = _scan_chunks(fn, k, arrays, images, 1)
    return y, (None if dk is None else lax.psum(dk, axes))

  batch = jax.P(axes)
  return jax.shard_map(per_device, mesh=sharding.mesh, in_specs=(jax.P(),) + (batch,) * len(arrays),
                       out_specs=(batch, jax.P()), axis_names=set(axes), check_vma=False)(k, *arrays)


def _scan_chunks(fn, k, arrays, images, multiple):
  # Images per step: the largest divisor of the batch up to `images` (at least one), a multiple of
  # `multiple` where the batch allows.
  n = arrays[0].shape[0]
  if not isinstance(n, int):  # a symbolic batch (jax.export): its divisors are unknown, so one step for all of it
    return fn(k, *arrays)
  sizes = [d for d in range(1, n + 1) if n % d == 0 and d <= max(images, multiple)]
  chunk = max([d for d in sizes if d % multiple == 0] or sizes)
  if chunk == n:
    return fn(k, *arrays)
  # Step j takes images j, j + steps, j + 2 * steps, ...: the chunk axis stays the major one,
  # where a partitioner that splits the batch across devices finds its split.
  steps = n // chunk
  arrays = [a.reshape((chunk, steps) + a.shape[1:]) for a in arrays]
  y, dk = jax.eval_shape(fn, k, *[a[:, 0] for a in arrays])
  ys = None if y is None else jnp.zeros((chunk, steps) + y.shape[1:], y.dtype)
  dk = None if dk is None else jnp.zeros(dk.shape, dk.dtype)

  def step(carry, j):
    ys, dk = carry
    y, dk_chunk = fn(k, *[lax.dynamic_index_in_dim(a, j, axis=1, keepdims=False) for a in arrays])
    ys = None if ys is None else lax.dynamic_update_index_in_dim(ys, y, j, axis=1)
    return (ys, None if dk is None else dk + dk_chunk), None

  (ys, dk), _ = lax.scan(step, (ys, dk), jnp.arange(steps))
  return (None if ys is None else ys.reshape((n,) + ys.shape[2:])), dk


def _split_kernel(kernel, groups):
  kh, kw, i, o = kernel.shape
  return kernel.reshape(kh * kw, i, groups, o // groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, kernel, cfg):
  return _conv_fwd(x, kernel, cfg)[0]


def _conv_fwd(x, kernel, cfg):
  groups, precision = cfg[3], cfg[4]
  if groups == 1 and x.shape[3] == 1:
    # One input channel (grayscale stems): a few multiply-adds per output, which XLA fuses into one
    # loop; XLA's convolution ran this shape at ~7 GFLOP/s, 2x slower in the small CNN's step.
    k = _f32(kernel.reshape(-1, kernel.shape[3]))
    y = sum(_f32(tap) * k[t] for t, tap in enumerate(_taps(x, kernel.shape, cfg)))
    return y.astype(x.dtype), (x, kernel)
  if groups == 1:  # XLA:CPU's dense forward convolution is fast; its gradients and grouped ones are not
    y = lax.conv_general_dilated(x, kernel, cfg[0], cfg[1], rhs_dilation=cfg[2], dimension_numbers=_DN,
                                 precision=precision)
    return y, (x, kernel)

  # Chunk results stay float32 until the loop ends: XLA:CPU would widen a bf16 buffer to float32
  # and back around every step's update, each time the whole buffer.
  def fn(k, xc):
    return _forward(_taps(xc, kernel.shape, cfg), k, precision), None

  y, _ = _over_batch(fn, _split_kernel(kernel, groups), [x], _patch_bytes(x, kernel.shape, cfg))
  return y.astype(x.dtype), (x, kernel)


def _conv_bwd(cfg, res, dy):
  x, kernel = res
  strides, pads, dilation, groups, precision = cfg
  taps, cin = kernel.shape[0] * kernel.shape[1], x.shape[3]
  # XLA's own gradients are fine in two dense cases: the input gradient of a stride-1 conv (a plain
  # forward conv) and the kernel gradient with few patch columns (first layers), too few for a matmul.
  lax_dx = groups == 1 and strides == (1, 1) and taps > 1
  lax_dk = groups == 1 and taps * cin < 64
  if lax_dx or lax_dk:
    conv = lambda x, kernel: lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation,
                                                      dimension_numbers=_DN, precision=precision)
    dx, dk = jax.vjp(conv, x, kernel)[1](dy)  # XLA drops whichever is not used
    if lax_dx and lax_dk:
      return dx, dk

  # A stride-1 depthwise input gradient is itself a depthwise conv: of dy, with the kernel flipped and
  # the padding mirrored. That runs ~4x faster than col2im's sum of padded pieces.
  extents = [(size - 1) * d for size, d in zip(kernel.shape, dilation)]
  flipped = (strides, tuple((e - lo, e - hi) for e, (lo, hi) in zip(extents, pads)), dilation, groups, None)
  flip_dx = groups == cin == kernel.shape[3] and strides == (1, 1) and min(min(p) for p in flipped[1]) >= 0

  def fn(k, xc, dyc):
    to_taps = functools.partial(_taps, k_shape=kernel.shape, cfg=cfg)
    if lax_dx:
      dxc = None
    elif flip_dx:
      dxc = _forward(_taps(dyc, kernel.shape, flipped), k[::-1], precision)
    else:  # col2im, the transpose of im2col; JAX derives it (pads and adds, fused) from `_taps`
      dxc = jax.vjp(to_taps, _f32(xc))[1](_taps_grad(dyc, k, precision))[0]
    dkc = None if lax_dk else _kernel_grad(to_taps(xc), dyc, k, precision)
    return dxc, dkc  # float32, as in _conv_fwd

  dx_im2col, dk_im2col = _over_batch(fn, _split_kernel(kernel, groups), [x, dy],
                                     _patch_bytes(x, kernel.shape, cfg))
  dx = dx if lax_dx else dx_im2col.astype(x.dtype)
  dk = dk if lax_dk else dk_im2col.reshape(kernel.shape).astype(kernel.dtype)
  return dx, dk


def _patch_bytes(x, k_shape, cfg):
  """Bytes of one image's patches (float32, as the gradient builds them)."""
  ho, wo = _out_size(x.shape, k_shape, cfg)
  return ho * wo * k_shape[0] * k_shape[1] * x.shape[3] * 4


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated`'s signature, as nn.Conv calls it; 2-D NHWC convolutions go to `conv2d`."""
  nhwc = dimension_numbers is not None and lhs.ndim == 4 and (
      lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN))
  if nhwc and not kwargs and all(d == 1 for d in _pair(lhs_dilation or 1)):
    return conv2d(lhs, rhs, window_strides, padding, feature_group_count, rhs_dilation or 1, precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, precision=precision, **kwargs)


class Conv(nn.Conv):
  """nn.Conv (same fields, parameters and results) whose convolution is `conv_general_dilated` above."""
  conv_general_dilated: Any = conv_general_dilated
