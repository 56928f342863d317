"""Decoding and resampling, for host preprocessing (preprocess.py plans what these run): image headers,
one decode (JPEG draft mode at 1/2, 1/4, 1/8), one resample of a source box, padded where it leaves the image,
and the same geometry for label maps (`warp_labels`: nearest, an ignore fill), so dense targets move with pixels.

Pixel convention (`centre_map`, shared by images and label maps): continuous coordinates, pixel i spanning
[i, i + 1), its centre at i + 0.5; an output pixel samples the source at its centre's preimage."""
import io

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

cv2.setNumThreads(1)  # one image per call, in one of several worker processes: no thread pool


class BadImage(Exception):
  """An image that cannot be decoded; the source names the file and applies data.on_bad_image."""


def header(data):
  """(width, height, channels) of an encoded image, from its header only."""
  if isinstance(data, np.ndarray):
    return data.shape[1], data.shape[0], 1 if data.ndim == 2 else data.shape[2]
  try:
    if simplejpeg.is_jpeg(data):
      h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
      return w, h, 1 if colorspace == "Gray" else 3
    with Image.open(io.BytesIO(data)) as im:
      return im.size[0], im.size[1], 1 if im.mode in ("1", "L", "I", "I;16", "F") else 3
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise BadImage(str(e) or type(e).__name__) from None


def _pil(data, channels, factor):
  """Any format through Pillow; JPEG in draft mode at 1/factor."""
  mode = "L" if channels == 1 else "RGB"
  with Image.open(io.BytesIO(data)) as im:
    if factor > 1 and im.format == "JPEG":
      im.draft(mode, (-(-im.size[0] // factor), -(-im.size[1] // factor)))
    return np.asarray(im.convert(mode)).reshape(im.size[1], im.size[0], channels)


def decode(data, channels, factor=1):
  """Encoded bytes (or an already decoded array) -> uint8 [H, W, channels] (1: grey, 3: RGB), JPEGs
  at 1/factor of their size straight from the DCT coefficients. Raises BadImage."""
  try:
    if isinstance(data, np.ndarray):
      a = data if data.ndim == 3 else data[..., None]
      if a.shape[-1] == 1:
        return a if channels == 1 else np.repeat(a, 3, -1)
      a = np.ascontiguousarray(a[..., :3])
      return a if channels == 3 else np.asarray(Image.fromarray(a).convert("L"))[..., None]
    if simplejpeg.is_jpeg(data):
      h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
      if colorspace not in ("CMYK", "YCCK"):  # those go through Pillow's colour conversion
        try:
          return simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB",
                                        min_height=-(-h // factor), min_width=-(-w // factor))
        except ValueError:
          pass  # libjpeg-turbo's strict mode refuses what Pillow accepts (e.g. extraneous bytes): let Pillow decide
    return _pil(data, channels, factor)
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise BadImage(str(e) or type(e).__name__) from None


IGNORE = 255  # the label of pixels with no class: outside the source image, or unlabelled


def centre_map(box, h, w):
  """The 2x3 matrix taking an output pixel's index (column, row) to the source position, in index units (a
  pixel's centre at its index), of the source box (x0, y0, x1, y1) resampled to (h, w): output pixel c's centre
  c + 0.5 lands on x0 + (c + 0.5) * (x1 - x0) / w in continuous source coordinates. OpenCV's inverse-map
  matrix for `resample` and the sampling grid of `warp_labels`."""
  x0, y0, x1, y1 = box
  sx, sy = (x1 - x0) / w, (y1 - y0) / h
  return np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]])


def warp_labels(labels, affine, h, w, fill=IGNORE):
  """A label map uint8 [H, W] (class ids) -> [h, w] under the affine map (sx, sy, tx, ty) from source to output
  pixels (preprocess.process_with_map's, flip included): each output pixel takes the label of the source
  pixel under its centre (nearest, `centre_map`'s convention), `fill` where that lies outside the source."""
  sx, sy, tx, ty = affine
  box = (-tx / sx, -ty / sy, (w - tx) / sx, (h - ty) / sy)  # the output's edges in the source (x0 > x1: flipped)
  m = centre_map(box, h, w)
  # Nearest: the source pixel whose [i, i + 1) holds the centre's preimage (its index position rounded half up).
  cols = np.floor(m[0, 0] * np.arange(w) + m[0, 2] + 0.5).astype(np.int64)
  rows = np.floor(m[1, 1] * np.arange(h) + m[1, 2] + 0.5).astype(np.int64)
  out = labels[np.clip(rows, 0, labels.shape[0] - 1)[:, None], np.clip(cols, 0, labels.shape[1] - 1)[None, :]]
  inside = ((rows >= 0) & (rows < labels.shape[0]))[:, None] & ((cols >= 0) & (cols < labels.shape[1]))[None, :]
  return np.where(inside, out, np.asarray(fill, labels.dtype))


def resample(a, box, h, w):
  """The source box (x0, y0, x1, y1) of uint8 [H, W, C] resampled to [h, w, C]. Under 2x reduction:
  bilinear at half-pixel centres on the exact (fractional) box, as TF's resize that big_vision uses
  (OpenCV, ~4x Pillow's speed); from 2x up (PNGs and decoded arrays get no DCT scaling): Pillow's
  antialiased bilinear, so large reductions do not alias."""
  c = a.shape[2]
  x0, y0, x1, y1 = box
  sx, sy = (x1 - x0) / w, (y1 - y0) / h
  if sx < 2 and sy < 2:
    out = cv2.warpAffine(a, centre_map(box, h, w), (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
  else:
    out = np.asarray(Image.fromarray(a[..., 0] if c == 1 else a).resize((w, h), Image.Resampling.BILINEAR, box=box))
  return out.reshape(h, w, c)


def resample_padded(a, box, h, w, fill):
  """Like `resample`, for a box that may reach past the image: what lies outside is `fill`. Large
  reductions are first area-averaged by a whole factor, so they do not alias."""
  x0, y0, x1, y1 = box
  k = int(min((x1 - x0) / w, (y1 - y0) / h))
  if k >= 2:
    small = cv2.resize(a, (max(1, a.shape[1] // k), max(1, a.shape[0] // k)), interpolation=cv2.INTER_AREA)
    fx, fy = small.shape[1] / a.shape[1], small.shape[0] / a.shape[0]
    a, box = small.reshape(small.shape[0], small.shape[1], a.shape[2]), (x0 * fx, y0 * fy, x1 * fx, y1 * fy)
  out = cv2.warpAffine(a, centre_map(box, h, w), (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * 4)
  return out.reshape(h, w, a.shape[2])
