"""Decoding and resampling, for host preprocessing (preprocess.py plans what these run): image headers,
one decode (JPEG draft mode at 1/2, 1/4, 1/8), one resample of a source box, padded where it leaves the image."""
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


def resample(a, box, h, w):
  """The source box (x0, y0, x1, y1) of uint8 [H, W, C] resampled to [h, w, C]. Under 2x reduction:
  bilinear at half-pixel centres on the exact (fractional) box, as TF's resize that big_vision uses
  (OpenCV, ~4x Pillow's speed); from 2x up (PNGs and decoded arrays get no DCT scaling): Pillow's
  antialiased bilinear, so large reductions do not alias."""
  c = a.shape[2]
  x0, y0, x1, y1 = box
  sx, sy = (x1 - x0) / w, (y1 - y0) / h
  if sx < 2 and sy < 2:
    m = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]])
    out = cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
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
    x0, y0, x1, y1 = box
  sx, sy = (x1 - x0) / w, (y1 - y0) / h
  m = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]])
  out = cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=(fill,) * 4)
  return out.reshape(h, w, a.shape[2])
