"""On-device augmentation, described by a string and applied inside the jitted train step.

  "crop(pad=4)|flip|rotate(15)|salt_pepper(0.02)|mixup(0.2)"

Ops run left to right on float images in [0, 1] (before normalisation). Per-example ops
draw their own key from the step's key, so every example gets different randomness and
the same key gives the same result. `mixup` and `cutmix` act on the whole batch and mix
the (soft) labels too.

Per-example ops: crop(pad), resized_crop(scale, ratio), flip(p), rotate(deg),
translate(frac), salt_pepper(p), gaussian_noise(std), cutout(size), erase(p, scale),
brightness(delta), contrast(delta), randaugment(n, m).
Batch ops: mixup(alpha), cutmix(alpha).
"""
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np

from imgrec import plots
from imgrec.data import preprocess, sources
from imgrec.errors import UserError


# ----------------------------------------------------------------------------- geometry

def _warp(x, inverse):
  """Samples image x [H, W, C] at inverse(output coords) with bilinear interpolation, zero outside.

  `inverse` is a 2x3 matrix mapping output (row, col, 1) centred coordinates to input ones.
  """
  h, w, _ = x.shape
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2,
                            jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2, indexing="ij")
  coords = jnp.stack([rows, cols, jnp.ones_like(rows)], 0).reshape(3, -1)
  src = inverse @ coords
  src_r, src_c = src[0] + (h - 1) / 2, src[1] + (w - 1) / 2
  sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src_r, src_c], order=1, mode="constant")
  return jax.vmap(sample, in_axes=2, out_axes=1)(x).reshape(x.shape)


def _rotation(angle):
  c, s = jnp.cos(angle), jnp.sin(angle)
  return jnp.array([[c, -s, 0.0], [s, c, 0.0]])


# ----------------------------------------------------------------------------- per-example ops
# Each takes (key, x [H, W, C] float in [0, 1], **args) and returns the same shape.

def crop(key, x, pad=4):
  """Zero-pads by `pad` pixels and crops back to the original size at a random offset."""
  h, w, c = x.shape
  padded = jnp.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  dr, dc = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(padded, (dr, dc, 0), (h, w, c))


def resized_crop(key, x, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
  """Inception-style crop: a random area fraction and aspect ratio, resized to the full image."""
  k1, k2, k3 = jax.random.split(key, 3)
  area = jax.random.uniform(k1, (), minval=scale[0], maxval=scale[1])
  log_r = jax.random.uniform(k2, (), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
  sh = jnp.clip(jnp.sqrt(area / jnp.exp(log_r)), 0.05, 1.0)  # crop height / image height
  sw = jnp.clip(jnp.sqrt(area * jnp.exp(log_r)), 0.05, 1.0)
  h, w, _ = x.shape
  centre = (jax.random.uniform(k3, (2,)) - 0.5) * jnp.array([(1 - sh) * (h - 1), (1 - sw) * (w - 1)])
  inverse = jnp.array([[sh, 0.0, centre[0]], [0.0, sw, centre[1]]])
  return _warp(x, inverse)


def flip(key, x, p=0.5):
  return jnp.where(jax.random.uniform(key) < p, x[:, ::-1], x)


def rotate(key, x, deg=15.0):
  angle = jax.random.uniform(key, (), minval=-deg, maxval=deg) * (math.pi / 180)
  return _warp(x, _rotation(angle))


def translate(key, x, frac=0.1):
  h, w, _ = x.shape
  shift = jax.random.uniform(key, (2,), minval=-frac, maxval=frac) * jnp.array([h, w])
  return _warp(x, jnp.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]]))


def salt_pepper(key, x, p=0.02):
  """Sets a fraction p of pixels to black or white (all channels of a pixel together)."""
  k1, k2 = jax.random.split(key)
  hit = jax.random.uniform(k1, x.shape[:2] + (1,)) < p
  salt = (jax.random.uniform(k2, x.shape[:2] + (1,)) < 0.5).astype(x.dtype)
  return jnp.where(hit, salt, x)


def gaussian_noise(key, x, std=0.05):
  return jnp.clip(x + std * jax.random.normal(key, x.shape), 0.0, 1.0)


def cutout(key, x, size=8):
  """Zeroes a size x size square at a random centre (it may hang over the border)."""
  h, w, _ = x.shape
  cr, cc = jax.random.randint(key, (2,), 0, jnp.array([h, w]))
  r, c = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (jnp.abs(r - cr) <= size // 2) & (jnp.abs(c - cc) <= size // 2)
  return jnp.where(inside[..., None], 0.0, x)


def erase(key, x, p=0.5, scale=(0.02, 0.25)):
  """Random erasing: with probability p, fills a random rectangle with uniform noise."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  h, w, _ = x.shape
  area = jax.random.uniform(k1, (), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(k2, (), minval=-1.0, maxval=1.0))
  eh = jnp.clip(jnp.sqrt(area * aspect) * h, 1, h)
  ew = jnp.clip(jnp.sqrt(area / aspect) * w, 1, w)
  top, left = jax.random.uniform(k3, (2,)) * jnp.array([h - eh, w - ew])
  r, c = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (r >= top) & (r < top + eh) & (c >= left) & (c < left + ew)
  apply = jax.random.uniform(k4) < p
  return jnp.where(apply & inside[..., None], jax.random.uniform(k4, x.shape), x)


def brightness(key, x, delta=0.2):
  return jnp.clip(x + jax.random.uniform(key, (), minval=-delta, maxval=delta), 0.0, 1.0)


def contrast(key, x, delta=0.2):
  factor = 1.0 + jax.random.uniform(key, (), minval=-delta, maxval=delta)
  mean = x.mean()
  return jnp.clip((x - mean) * factor + mean, 0.0, 1.0)


def _invert(key, x, m):
  del key, m
  return 1.0 - x


def _posterize(key, x, m):
  del key
  levels = 2.0 ** jnp.round(8 - 4 * m)  # 256 levels at m=0, 16 at m=1
  return jnp.floor(x * (levels - 1) + 0.5) / (levels - 1)


def _solarize(key, x, m):
  del key
  return jnp.where(x >= 1.0 - m, 1.0 - x, x)


def _equalize_contrast(key, x, m):
  """Autocontrast blended by m: stretch the image to the full range."""
  del key
  lo, hi = x.min(), x.max()
  stretched = (x - lo) / jnp.maximum(hi - lo, 1e-3)
  return (1 - m) * x + m * stretched


def _signed(key, m):
  return jnp.where(jax.random.uniform(key) < 0.5, -m, m)


# RandAugment's op list; each takes a magnitude m in [0, 1] (config m / 10) and a random sign.
_RANDAUGMENT_OPS = (
    lambda k, x, m: x,  # identity
    lambda k, x, m: _warp(x, _rotation(_signed(k, m) * math.pi / 6)),  # rotate up to 30 degrees
    lambda k, x, m: _warp(x, jnp.array([[1.0, 0.0, 0.0], [_signed(k, m) * 0.3, 1.0, 0.0]])),  # shear
    lambda k, x, m: _warp(x, jnp.array([[1.0, 0.0, _signed(k, m) * 0.3 * x.shape[0]], [0.0, 1.0, 0.0]])),
    lambda k, x, m: _warp(x, jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, _signed(k, m) * 0.3 * x.shape[1]]])),
    lambda k, x, m: jnp.clip(x + _signed(k, m) * 0.4, 0.0, 1.0),  # brightness
    lambda k, x, m: jnp.clip((x - x.mean()) * (1 + _signed(k, m) * 0.8) + x.mean(), 0.0, 1.0),  # contrast
    _invert, _posterize, _solarize, _equalize_contrast,
)


def randaugment(key, x, n=2, m=9):
  """RandAugment: n ops drawn uniformly from a fixed list, each at magnitude m (0..10)."""
  for k in jax.random.split(key, n):
    k_op, k_arg = jax.random.split(k)
    index = jax.random.randint(k_op, (), 0, len(_RANDAUGMENT_OPS))
    x = jax.lax.switch(index, _RANDAUGMENT_OPS, k_arg, x, m / 10.0)
  return x


# ----------------------------------------------------------------------------- batch ops
# Each takes (key, images [N, H, W, C], soft labels [N, K], **args).

def mixup(key, images, labels, alpha=0.2):
  """Convex combination of the batch with a shuffled copy of itself, one ratio per batch."""
  k1, k2 = jax.random.split(key)
  lam = jax.random.beta(k1, alpha, alpha)
  perm = jax.random.permutation(k2, images.shape[0])
  return lam * images + (1 - lam) * images[perm], lam * labels + (1 - lam) * labels[perm]


def cutmix(key, images, labels, alpha=1.0):
  """Pastes a random box from a shuffled copy; labels mix by the pasted area."""
  k1, k2, k3 = jax.random.split(key, 3)
  n, h, w, _ = images.shape
  lam = jax.random.beta(k1, alpha, alpha)
  ch, cw = jnp.sqrt(1 - lam) * h, jnp.sqrt(1 - lam) * w
  cr, cc = jax.random.uniform(k2, (2,)) * jnp.array([h, w])
  r, c = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = (jnp.abs(r - cr) < ch / 2) & (jnp.abs(c - cc) < cw / 2)
  perm = jax.random.permutation(k3, n)
  area = box.mean()  # the exact pasted fraction after clipping at the borders
  mixed = jnp.where(box[None, :, :, None], images[perm], images)
  return mixed, (1 - area) * labels + area * labels[perm]


EXAMPLE_OPS = {f.__name__: f for f in (crop, resized_crop, flip, rotate, translate, salt_pepper, gaussian_noise,
                                        cutout, erase, brightness, contrast, randaugment)}
BATCH_OPS = {f.__name__: f for f in (mixup, cutmix)}


# ----------------------------------------------------------------------------- parsing and applying

# Valid ranges of the ops' arguments, by argument name (the same meaning wherever a name recurs):
# (low, high, integer?); POSITIVE ones must also be > low. A value outside is a config error, not a
# silently odd augmentation (flip(3) would flip every image).
ARG_RANGES = {"p": (0.0, 1.0, False), "frac": (0.0, 1.0, False), "deg": (0.0, 180.0, False),
              "pad": (0, None, True), "size": (1, None, True), "std": (0.0, None, False),
              "delta": (0.0, 1.0, False), "alpha": (0.0, None, False), "n": (0, None, True),
              "m": (0.0, 10.0, False), "scale": (0.0, 1.0, False), "ratio": (0.0, None, False)}
POSITIVE = {"alpha", "scale", "ratio"}
PAIRS = {"scale", "ratio"}  # (low, high); every other argument is one number


def _check_range(name, arg, value):
  low, high, integer = ARG_RANGES[arg]
  if (arg in PAIRS) != isinstance(value, tuple):
    raise UserError(f"augmentation {name}({arg}=...) takes " + ("a (low, high) pair" if arg in PAIRS else "one number")
                    + f", got {value!r}")
  values = value if isinstance(value, tuple) else (value,)
  if isinstance(value, tuple) and (len(value) != 2 or value[0] > value[1]):
    raise UserError(f"augmentation {name}({arg}=...) takes a (low, high) pair with low <= high, got {value!r}")
  for v in values:
    if integer and not float(v).is_integer():
      raise UserError(f"augmentation {name}({arg}=...) needs a whole number, got {v!r}")
    if v < low or (arg in POSITIVE and v == low) or (high is not None and v > high):
      bounds = f"> {low}" if arg in POSITIVE else f">= {low}"
      bounds += f" and <= {high}" if high is not None else ""
      raise UserError(f"augmentation {name}({arg}={value!r}) is out of range: {arg} must be {bounds}")


def parse(spec):
  """'crop(pad=4)|flip' -> [("crop", {"pad": 4}), ("flip", {})]; errors name the bad op or argument."""
  ops = []
  for name, args, kwargs, _ in preprocess.split_ops(spec, "augmentation", "crop(pad=4)"):
    fn = EXAMPLE_OPS.get(name) or BATCH_OPS.get(name)
    if fn is None:
      raise UserError(f"unknown augmentation {name!r}; known: {', '.join(sorted({**EXAMPLE_OPS, **BATCH_OPS}))}")
    params = list(inspect.signature(fn).parameters)[3 if name in BATCH_OPS else 2:]
    if len(args) > len(params):
      raise UserError(f"augmentation {name!r} takes at most {len(params)} argument(s): {', '.join(params)}")
    kwargs.update(zip(params, args))
    unknown = set(kwargs) - set(params)
    if unknown:
      raise UserError(f"augmentation {name!r} has no argument {sorted(unknown)[0]!r}; it takes: {', '.join(params)}")
    for k, v in kwargs.items():
      if not isinstance(v, (int, float, tuple)) or isinstance(v, bool) or (
          isinstance(v, tuple) and not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in v)):
        raise UserError(f"augmentation {name}({k}=...) needs a number, got {v!r}")
      _check_range(name, k, v)
    ops.append((name, kwargs))
  return ops


# Device ops that leave every pixel where it was: all that a task whose targets are tied to pixel positions
# (boxes, label maps) may run on device, where those targets cannot follow; its geometry runs on the host.
PHOTOMETRIC = ("brightness", "contrast", "gaussian_noise", "salt_pepper", "cutout", "erase")


def pixels_stay(spec, task, targets, allowed=PHOTOMETRIC):
  """The parsed ops of `spec` (data.augment), refused in one line if one moves or mixes pixels: `task`'s
  `targets` ("the boxes") could not follow it on device."""
  ops = parse(spec)
  moving = [name for name, _ in ops if name not in allowed]
  if moving:
    raise UserError(f"data.augment {moving[0]!r} moves or mixes pixels on device, where {targets} cannot follow; "
                    f"{task} takes only {', '.join(allowed)} there: put geometry in data.pp_train (host ops that "
                    f"move {targets} too, e.g. random_scale_crop, flip)")
  return ops


def unmixed(spec, why):
  """The parsed ops of `spec` (data.augment), refused in one line if one mixes two images (mixup, cutmix): `why`
  says what the task needs of an image (one caption, one identity)."""
  ops = parse(spec)
  mixing = [name for name, _ in ops if name in BATCH_OPS]
  if mixing:
    raise UserError(f"data.augment {mixing[0]!r} mixes images of two examples; {why}: drop it")
  return ops


def apply_images(ops, key, images):
  """`apply` for a task without soft labels to mix: the images alone."""
  return apply(ops, key, images, jnp.zeros((images.shape[0], 1)))[0] if ops else images


def apply(ops, key, images, labels):
  """Applies parsed ops to float images [N, H, W, C] in [0, 1] and soft labels [N, K]."""
  for i, (name, kwargs) in enumerate(ops):
    k = jax.random.fold_in(key, i)
    if name in BATCH_OPS:
      images, labels = BATCH_OPS[name](k, images, labels, **kwargs)
    else:
      fn = EXAMPLE_OPS[name]
      keys = jax.random.split(k, images.shape[0])
      images = jax.vmap(lambda kk, x: fn(kk, x, **kwargs))(keys, images)
  return images, labels


def preview(cfg, out_path, n=8, copies=6, ds=None):
  """Writes a PNG grid: n training images (rows), the original then `copies` augmented draws. `ds`: the data
  set already open (the trainer's), so a big folder is not scanned a second time."""
  ds = ds or sources.load(cfg.data)
  split = ds.split(cfg.data.train_split)
  idx = np.random.default_rng(cfg.seed).choice(len(split), n, replace=False)
  images, labels = split.get(idx)
  ops = parse(cfg.data.augment)
  x = jnp.asarray(images, jnp.float32) / 255.0
  y = jax.nn.one_hot(jnp.asarray(labels), ds.num_classes)
  draws = [apply(ops, jax.random.key(cfg.seed + i), x, y)[0] for i in range(copies)]
  plots.plot_augment_grid(x, draws, [ds.class_names[label] for label in labels],
                          f"augment: {cfg.data.augment or '(none)'}", out_path)
  return out_path
