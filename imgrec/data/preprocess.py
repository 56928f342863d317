"""Host-side preprocessing at decode time, described by a string (big_vision style).

  train: "decode|random_resized_crop(224)|flip"           (IMAGENET_TRAIN)
  eval:  "decode|resize_small(256)|central_crop(224)"     (IMAGENET_EVAL)

Set as `data.pp_train` / `data.pp_eval`; empty means the source's default (`defaults`). These ops
fix the image size on the host, once per example, in the data workers; the on-device
`data.augment` ops (imgrec/data/augment.py) and normalisation run later, inside the jitted step.

Ops, left to right:
  decode                          always first: the encoded image (JPEG, PNG, ...) -> pixels
  resize(size) | resize(h, w)     to exactly that size (aspect ratio not kept)
  resize_small(size)              the shorter side to `size`, the longer one int(size * long / short)
  central_crop(size) | (h, w)     the central window (an image smaller than it is enlarged first)
  random_resized_crop(size, scale=(0.08, 1.0), ratio=(3/4, 4/3))   torchvision's RandomResizedCrop
  letterbox(size, fill=0)         aspect kept: the longer side to `size`, the image at the top left of a
                                  size x size canvas, the rest `fill` (detection eval)
  random_scale_crop(size, scale=(0.5, 1.5), fill=0)   scale jitter: letterbox scale times a random factor
                                  in `scale`, then a random size x size window (padded with `fill` where the
                                  image is smaller); boxes stay consistent (detection train)
  flip | flip(p)                  horizontal flip with probability p (0.5)

The ops are planned on the image header before any pixel is decoded, then run as one decode and
one resample: every crop and resize composes into a single source box resampled once to the
output size (`resample`). A JPEG whose box is at least twice the output size is decoded at 1/2,
1/4 or 1/8 scale straight from the DCT coefficients (draft mode), which skips most of the
decoding work and leaves less than 2x to resample. Randomness comes from the `rng` the caller
passes (keyed by seed and example).

`process_with_map` also returns the plan's affine map from source pixels to output pixels (flip
included): what moves boxes with the pixels (imgrec/tasks/detection/transforms.py), warps label maps
(`warp_labels`: nearest, IGNORE outside the source; segmentation) and maps a prediction back onto the
uploaded image. Coordinates are continuous, pixel i spanning [i, i + 1).
"""
import ast
import dataclasses
import functools
import math
import re

import numpy as np

# Decoding lives in decode.py; its names are re-exported, as callers know them as preprocess.BadImage etc.
from imgrec.data.decode import (IGNORE, BadImage, centre_map, decode, header, resample, resample_padded,  # noqa: F401
                                warp_labels)
from imgrec.errors import UserError

IMAGENET_TRAIN = "decode|random_resized_crop(224)|flip"
IMAGENET_EVAL = "decode|resize_small(256)|central_crop(224)"
EVAL_CROP_FRACTION = 0.875  # 224 / 256: the eval crop's share of the resized short side

# ----------------------------------------------------------------------------- op strings

_OP = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")


def split_ops(spec, what, example):
  """'a(1, x=2)|b' -> [("a", [1], {"x": 2}, "a(1, x=2)"), ("b", [], {}, "b")]; literal arguments only.

  Shared by this module's and augment's parsers; `what` and `example` word their errors."""
  out = []
  for part in filter(str.strip, (spec or "").split("|")):
    m = _OP.match(part)
    if not m:
      raise UserError(f"bad {what} {part!r}; write NAME or NAME(arg=value, ...)")
    try:
      call = ast.parse(f"f({m.group(2) or ''})", mode="eval").body
      args = [ast.literal_eval(a) for a in call.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError):
      raise UserError(f"bad arguments in {what} {part!r}; use numbers, e.g. {example}") from None
    out.append((m.group(1), args, kwargs, part.strip()))
  return out


# name -> (parameters, defaults); sizes are one int or an (h, w) pair.
OPS = {"decode": ((), {}),
       "resize": (("size", "width"), {"width": None}),
       "resize_small": (("size",), {}),
       "central_crop": (("size", "width"), {"width": None}),
       "random_resized_crop": (("size", "scale", "ratio"), {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)}),
       "letterbox": (("size", "fill"), {"fill": 0}),
       "random_scale_crop": (("size", "scale", "fill"), {"scale": (0.5, 1.5), "fill": 0}),
       "flip": (("p",), {"p": 0.5})}
FIXED_SIZE = ("resize", "central_crop", "random_resized_crop", "letterbox", "random_scale_crop")


def _number_pair(op, arg, v, low_inclusive):
  if not (isinstance(v, tuple) and len(v) == 2 and all(isinstance(e, (int, float)) and not isinstance(e, bool)
                                                        for e in v) and 0 < v[0] <= v[1]):
    raise UserError(f"preprocessing {op}({arg}=...) takes a (low, high) pair with 0 < low <= high, got {v!r}")
  if low_inclusive is not None and v[1] > low_inclusive:
    raise UserError(f"preprocessing {op}({arg}={v!r}) is out of range: high must be <= {low_inclusive}")
  return (float(v[0]), float(v[1]))


def _size(op, v):
  if isinstance(v, bool) or not isinstance(v, int) or v < 1:
    raise UserError(f"preprocessing {op} needs a positive whole number of pixels, got {v!r}")
  return v


@dataclasses.dataclass(frozen=True)
class Op:
  name: str
  size: tuple = ()     # (h, w) for resize, central_crop, random_resized_crop; (s,) for resize_small
  scale: tuple = ()
  ratio: tuple = ()
  p: float = 0.5
  fill: int = 0        # letterbox, random_scale_crop: the value of padded pixels


@functools.lru_cache(maxsize=64)
def parse(spec):
  """'decode|resize_small(256)|central_crop(224)' -> tuple of Op; errors name the bad op or argument."""
  ops = []
  for name, args, kwargs, part in split_ops(spec, "preprocessing op", "central_crop(224)"):
    if name not in OPS:
      hint = (" (augmentation runs on device: data.augment)" if name in ("crop", "resized_crop", "rotate", "mixup")
              else " (normalisation is data.mean / data.std / data.norm)" if name in ("value_range", "normalize")
              else "")
      raise UserError(f"unknown preprocessing op {name!r} in {spec!r}; known: {', '.join(OPS)}{hint}")
    params, defaults = OPS[name]
    if len(args) > len(params):
      raise UserError(f"preprocessing op {part!r} takes at most {len(params)} argument(s)"
                      + (f": {', '.join(params)}" if params else ""))
    values = dict(defaults)
    values.update(zip(params, args))
    unknown = set(kwargs) - set(params)
    if unknown:
      raise UserError(f"preprocessing op {name!r} has no argument {sorted(unknown)[0]!r}"
                      + (f"; it takes: {', '.join(params)}" if params else "; it takes none"))
    values.update(kwargs)
    if "size" in params and "size" not in values:
      raise UserError(f"preprocessing op {name!r} needs a size, e.g. {name}(224)")
    if name in ("resize", "central_crop"):
      h = _size(name, values["size"])
      ops.append(Op(name, (h, _size(name, values["width"]) if values["width"] is not None else h)))
    elif name == "resize_small":
      ops.append(Op(name, (_size(name, values["size"]),)))
    elif name == "random_resized_crop":
      s = values["size"]
      hw = (_size(name, s[0]), _size(name, s[1])) if isinstance(s, tuple) and len(s) == 2 else (_size(name, s),) * 2
      ops.append(Op(name, hw, scale=_number_pair(name, "scale", values["scale"], 1.0),
                    ratio=_number_pair(name, "ratio", values["ratio"], None)))
    elif name in ("letterbox", "random_scale_crop"):
      fill = values["fill"]
      if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 255:
        raise UserError(f"preprocessing {name}(fill={fill!r}) is out of range: a pixel value in 0..255")
      scale = _number_pair(name, "scale", values["scale"], None) if name == "random_scale_crop" else ()
      ops.append(Op(name, (_size(name, values["size"]),) * 2, scale=scale, fill=fill))
    elif name == "flip":
      p = values["p"]
      if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise UserError(f"preprocessing flip(p={p!r}) is out of range: p must be in [0, 1]")
      ops.append(Op(name, p=float(p)))
    else:
      ops.append(Op(name))
  if not ops or ops[0].name != "decode" or any(op.name == "decode" for op in ops[1:]):
    raise UserError(f"preprocessing {spec!r} must start with decode, once, e.g. {IMAGENET_EVAL!r}")
  return tuple(ops)


def output_size(ops):
  """(h, w) every image comes out at, or None when it follows each image's size."""
  size = None
  for op in ops:
    if op.name in FIXED_SIZE:
      size = op.size
    elif op.name == "resize_small":
      size = None
  return size


def defaults(photo, image_size):
  """(pp_train, pp_eval) for a source: the ImageNet recipe for photos (at `image_size` if set),
  else decode at the source's size, or resized to a square `image_size` (small fixed-size sets)."""
  if photo:
    crop = image_size or 224
    return (f"decode|random_resized_crop({crop})|flip",
            f"decode|resize_small({int(round(crop / EVAL_CROP_FRACTION))})|central_crop({crop})")
  pp = f"decode|resize({image_size})" if image_size else "decode"
  return pp, pp


# ----------------------------------------------------------------------------- planning


@dataclasses.dataclass
class Plan:
  """Where the ops leave the image: the source box (x0, y0, x1, y1) resampled to (h, w), then mirrored.
  `fill` set (letterbox, random_scale_crop): the box may reach past the image, which is padded with it."""
  box: tuple
  h: int
  w: int
  flip: bool = False
  fill: int | None = None

  def affine(self):
    """(sx, sy, tx, ty): source point (x, y) lands at output (x * sx + tx, y * sy + ty); sx < 0 when flipped."""
    x0, y0, x1, y1 = self.box
    sx, sy = self.w / (x1 - x0), self.h / (y1 - y0)
    if self.flip:  # output column c shows source column x1 - c / sx
      return (-sx, sy, x1 * sx, -y0 * sy)
    return (sx, sy, -x0 * sx, -y0 * sy)

  def crop(self, top, left, height, width):
    """The window (top, left, height, width) of the current (h, w) image, as a source box."""
    x0, y0, x1, y1 = self.box
    sx, sy = (x1 - x0) / self.w, (y1 - y0) / self.h
    if self.flip:  # the current image is mirrored: its column c is source column x1 - c * sx
      nx0, nx1 = x1 - (left + width) * sx, x1 - left * sx
    else:
      nx0, nx1 = x0 + left * sx, x0 + (left + width) * sx
    self.box = (nx0, y0 + top * sy, nx1, y0 + (top + height) * sy)
    self.h, self.w = height, width


def random_resized_crop_window(height, width, scale, ratio, rng):
  """(top, left, h, w) of torchvision's RandomResizedCrop: 10 tries at a random area fraction in
  `scale` and a log-uniform aspect ratio in `ratio`, else the central crop clamped to `ratio`."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def plan(ops, width, height, rng):
  """Runs the ops on a (height, width) image's geometry only; returns the Plan."""
  p = Plan((0.0, 0.0, float(width), float(height)), height, width)
  for op in ops:
    if op.name == "resize":
      p.h, p.w = op.size
    elif op.name == "resize_small":
      s = op.size[0]
      p.h, p.w = (int(s * p.h / p.w), s) if p.w <= p.h else (s, int(s * p.w / p.h))
    elif op.name == "central_crop":
      ch, cw = op.size
      if ch > p.h or cw > p.w:  # enlarge (aspect kept) until the window fits
        k = max(ch / p.h, cw / p.w)
        p.h, p.w = max(ch, int(round(p.h * k))), max(cw, int(round(p.w * k)))
      p.crop(int(round((p.h - ch) / 2)), int(round((p.w - cw) / 2)), ch, cw)
    elif op.name == "random_resized_crop":
      p.crop(*random_resized_crop_window(p.h, p.w, op.scale, op.ratio, rng))
      p.h, p.w = op.size
    elif op.name == "letterbox":
      side = op.size[0] / max(p.h, p.w)  # output pixels per current pixel
      p.crop(0.0, 0.0, op.size[0] / side, op.size[0] / side)  # the canvas, image at its top left
      p.h = p.w = op.size[0]
      p.fill = op.fill
    elif op.name == "random_scale_crop":
      k = op.size[0] / max(p.h, p.w) * rng.uniform(op.scale[0], op.scale[1])
      # A random window where the scaled image is larger than the output; the image at the top left
      # (padded right and below, as letterbox pads) where it is smaller.
      top = rng.uniform(0.0, max(0.0, p.h * k - op.size[0]))
      left = rng.uniform(0.0, max(0.0, p.w * k - op.size[0]))
      p.crop(top / k, left / k, op.size[0] / k, op.size[0] / k)
      p.h = p.w = op.size[0]
      p.fill = op.fill
    elif op.name == "flip":
      if rng.random() < op.p:
        p.flip = not p.flip
  return p


def draft_factor(p):
  """The largest JPEG DCT scale-down (1, 2, 4 or 8) that leaves the box at least the output size."""
  x0, y0, x1, y1 = p.box
  for r in (8, 4, 2):
    if (x1 - x0) / r >= p.w and (y1 - y0) / r >= p.h:
      return r
  return 1


# ----------------------------------------------------------------------------- running the plan


def process_with_map(ops, data, channels, rng):
  """One example: encoded bytes or a decoded array -> (uint8 [h, w, channels] after `ops`, the plan's
  affine map (sx, sy, tx, ty) from source pixels to output pixels; see Plan.affine)."""
  width, height, _ = header(data)
  p = plan(ops, width, height, rng)
  factor = draft_factor(p) if not isinstance(data, np.ndarray) else 1
  a = decode(data, channels, factor)
  sy, sx = a.shape[0] / height, a.shape[1] / width
  if p.fill is not None:
    a = resample_padded(a, (p.box[0] * sx, p.box[1] * sy, p.box[2] * sx, p.box[3] * sy), p.h, p.w, p.fill)
  else:
    box = (max(p.box[0] * sx, 0.0), max(p.box[1] * sy, 0.0), min(p.box[2] * sx, float(a.shape[1])),
           min(p.box[3] * sy, float(a.shape[0])))  # clamped: float rounding must not leave the image
    if box != (0.0, 0.0, float(a.shape[1]), float(a.shape[0])) or (p.h, p.w) != a.shape[:2]:
      a = resample(a, box, p.h, p.w)
  return (np.ascontiguousarray(a[:, ::-1]) if p.flip else a), p.affine()


def process(ops, data, channels, rng):
  """One example: encoded bytes or a decoded array -> uint8 [h, w, channels] after `ops`."""
  return process_with_map(ops, data, channels, rng)[0]


def invert(affine):
  """The inverse of an affine map (sx, sy, tx, ty): output pixels -> source pixels."""
  sx, sy, tx, ty = affine
  return (1.0 / sx, 1.0 / sy, -tx / sx, -ty / sy)


def fit(image, image_shape):
  """A processed image -> exactly `image_shape` (h, w, c): resized when its pp left another size."""
  h, w, _ = image_shape
  if image.shape[:2] == (h, w):
    return image
  return resample(image, (0.0, 0.0, float(image.shape[1]), float(image.shape[0])), h, w)


def for_model(data, pp_eval, image_shape):
  """An encoded image -> uint8 `image_shape` as the run's evaluation saw it: its eval preprocessing
  (dataset.json's pp_eval), fitted to the model's input; a plain resize for runs without one
  (in-memory sets). What `imgrec serve` and `imgrec explain --images` apply to any image."""
  return for_model_with_map(data, pp_eval, image_shape)[0]


def for_model_with_map(data, pp_eval, image_shape):
  """`for_model`, and the map (sx, sy, tx, ty) from the model input's pixels back to the uploaded image's:
  what puts a predicted box onto the image the client sent."""
  image, affine = process_with_map(parse(pp_eval or "decode"), data, image_shape[2], None)
  h, w = image.shape[:2]
  out = fit(image, image_shape)
  k = (out.shape[1] / w, out.shape[0] / h)  # fit's resize, composed after the plan's map
  return out, invert((affine[0] * k[0], affine[1] * k[1], affine[2] * k[0], affine[3] * k[1]))
