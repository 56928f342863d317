"""face_glyphs: the embedded identity set. No download, and no faces: an identity is one character (0-9, A-Z,
a-z) in one of the fonts matplotlib ships (DejaVu, STIX, Computer Modern), and its images are that glyph
rendered with a random pose (rotation, shear, scale, shift), colours, blur and noise. Like faces, identities
differ in fine detail (the same letter in DejaVu Sans and DejaVu Sans Oblique is a hard impostor) while one
identity's images differ in pose and lighting.

Image j of identity i depends only on (seed, i, j); the identities are in a fixed order (font, character) and a
font lacking a character (it would render the "missing glyph" box) leaves that identity out.
"""
import functools
import os

import cv2
import matplotlib
import numpy as np
import tqdm
from PIL import Image, ImageDraw, ImageFont

CHARACTERS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
FONT_DIR = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique", "DejaVuSansMono",
         "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique", "DejaVuSerif",
         "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic", "STIXGeneral", "STIXGeneralBol",
         "STIXGeneralItalic", "STIXGeneralBolIta", "cmr10", "cmb10", "cmss10", "cmti10", "cmtt10", "cmmi10")
RENDER = 64  # glyphs are rendered at this size, then warped down to the image size


def _render(font, ch):
  """float32 [RENDER, RENDER] coverage in 0..1 of one character, centred on its ink."""
  canvas = Image.new("L", (RENDER * 2, RENDER * 2), 0)
  ImageDraw.Draw(canvas).text((RENDER, RENDER), ch, fill=255, font=font, anchor="mm")
  a = np.asarray(canvas, np.float32) / 255.0
  ys, xs = np.nonzero(a > 0.1)
  if not len(ys):
    return None
  cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
  half = RENDER // 2
  return a[cy - half:cy + half, cx - half:cx + half]


@functools.lru_cache(maxsize=2)
def identities():
  """(names ["font/char"], float32 [N, RENDER, RENDER] master glyphs): every (font, character) the font draws."""
  names, masters = [], []
  for f in FONTS:
    font = ImageFont.truetype(os.path.join(FONT_DIR, f + ".ttf"), int(RENDER * 0.7))
    missing = _render(font, "\uffff")  # the font's "no such glyph" drawing
    for ch in CHARACTERS:
      g = _render(font, ch)
      if g is None or (missing is not None and np.array_equal(g, missing)):
        continue
      names.append(f"{f}/{ch}")
      masters.append(g)
  return tuple(names), np.stack(masters)


def image(master, rng, size):
  """uint8 [size, size, 3]: one glyph in a random pose, colours, blur and noise."""
  angle = rng.uniform(-15, 15)
  scale = rng.uniform(0.75, 1.0) * size / RENDER
  shear = rng.uniform(-0.15, 0.15)
  m = cv2.getRotationMatrix2D((RENDER / 2, RENDER / 2), angle, scale)
  m[:, 1] += m[:, 0] * shear  # shear along x
  m[:, 2] = np.array([size / 2, size / 2]) - m[:, :2] @ np.array([RENDER / 2, RENDER / 2])  # centre to centre
  m[:, 2] += rng.uniform(-0.08, 0.08, 2) * size
  alpha = cv2.warpAffine(master, m, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
  sigma = rng.uniform(0, 0.8)
  if sigma > 0.3:
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
  bg = rng.uniform(0, 255, 3)
  fg = np.where(bg > 127, rng.uniform(0, 90, 3), rng.uniform(165, 255, 3))  # ink far from the paper, per channel
  out = bg + (fg - bg) * alpha[..., None] + rng.normal(0, rng.uniform(0, 10), (size, size, 3))
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def generate(ids, per_identity, size, seed=0, desc="face_glyphs"):
  """(uint8 [len(ids) * per_identity, size, size, 3], int32 identity index into identities() per image)."""
  _, masters = identities()
  ids = np.asarray(ids)
  out = np.zeros((len(ids) * per_identity, size, size, 3), np.uint8)
  for k, i in enumerate(tqdm.tqdm(ids, desc=desc, unit="identity", leave=False)):
    for j in range(per_identity):
      out[k * per_identity + j] = image(masters[i], np.random.default_rng([seed, int(i), j]), size)
  return out, np.repeat(ids, per_identity).astype(np.int32)
