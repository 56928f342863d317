"""digit_masks: the embedded segmentation set. The digit canvases of detection's digit_boxes
(imgrec/tasks/detection/synthetic.py: the same images, seeds and glyph halves) with their exact label maps:
class 0 "background" on the canvas, class d + 1 ("0".."9") on the visible pixels of a pasted digit d (alpha at
least ALPHA_VISIBLE; a later digit covers an earlier one, as in the image). Train and test draw from disjoint
halves of the glyphs. No pixel is ignored (255): every pixel has a class.

`write_folder` puts it on disk in the seg:DIR layout (images/, masks/ with the same stems, classes.txt, a
split file per split, preview.png): what `imgrec make-segmentation-data DIR` writes.
"""
import os

import numpy as np
import tqdm
from PIL import Image

from imgrec.data import decode
from imgrec.tasks.detection import synthetic as boxes

CLASS_NAMES = ("background",) + boxes.CLASS_NAMES
SPLITS = boxes.SPLITS
# Class colours of overlays and previews (index = class; background transparent in overlays).
PALETTE = np.array([(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
                    (0, 128, 128), (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128),
                    (128, 128, 128), (255, 215, 180), (220, 190, 255)], np.uint8)


def colours(n):
  """uint8 [256, 3]: a colour per class id 0..n-1 (PALETTE, then a fixed random draw), white for IGNORE."""
  extra = np.random.default_rng(7).integers(0, 256, (max(0, 256 - len(PALETTE)), 3)).astype(np.uint8)
  table = np.concatenate([PALETTE, extra])[:256].copy()
  table[decode.IGNORE] = 255
  del n
  return table


def generate(split, n, size, seed=0, progress=False):
  """(uint8 [n, size, size, 3] images, uint8 [n, size, size] label maps) of a split."""
  source = boxes.glyphs(split)
  images = np.zeros((n, size, size, 3), np.uint8)
  labels = np.zeros((n, size, size), np.uint8)
  for i in tqdm.trange(n, desc=f"digit_masks {split}", unit="img", disable=not progress):
    images[i], _, _, labels[i] = boxes.image(seed, split, i, size, source, with_labels=True)
  return images, labels


def write_folder(directory, sizes, size, seed=0):
  """Writes DIR/images/{train,test}_NNNNNN.png, DIR/masks/ (the same names: class ids as greyscale PNG),
  DIR/{train,test}.txt (the stems of each split), DIR/classes.txt and DIR/preview.png; `seg:DIR` reads it back.
  Returns {split: labelled (non-background) pixels}."""
  for sub in ("images", "masks"):
    os.makedirs(os.path.join(directory, sub), exist_ok=True)
  counts = {}
  for split, n in zip(SPLITS, sizes):
    images, labels = generate(split, n, size, seed, progress=True)
    stems = [f"{split}_{i + 1:06d}" for i in range(n)]
    for a, m, stem in zip(tqdm.tqdm(images, desc=f"writing {split}", unit="img"), labels, stems):
      Image.fromarray(a).save(os.path.join(directory, "images", stem + ".png"))
      Image.fromarray(m).save(os.path.join(directory, "masks", stem + ".png"))
    with open(os.path.join(directory, f"{split}.txt"), "w") as f:
      f.write("".join(s + "\n" for s in stems))
    counts[split] = int((labels > 0).sum())
    if split == "train":
      preview(os.path.join(directory, "preview.png"), images[:8], labels[:8])
  with open(os.path.join(directory, "classes.txt"), "w") as f:
    f.write("".join(c + "\n" for c in CLASS_NAMES))
  return counts


def overlay(image, labels, alpha=0.55):
  """uint8 [H, W, 3]: the image with each labelled pixel (class > 0, not IGNORE) tinted by its class colour;
  IGNORE pixels whitened."""
  table = colours(256)
  tint = table[labels].astype(np.float32)
  a = np.where((labels > 0)[..., None], alpha, 0.0)
  out = image.astype(np.float32) * (1 - a) + tint * a
  return np.round(out).astype(np.uint8)


def preview(path, images, labels, scale=3):
  """A PNG of pairs (image, image with its label map overlaid), one pair per row-cell, upscaled `scale`x."""
  n = len(images)
  h, w = images.shape[1] * scale, images.shape[2] * scale
  columns = 4
  rows = -(-n // columns)
  grid = Image.new("RGB", (columns * (2 * w + 8), rows * (h + 4)), "white")
  for k in range(n):
    pair = np.concatenate([images[k], overlay(images[k], labels[k])], 1)
    tile = Image.fromarray(pair).resize((2 * w, h), Image.Resampling.NEAREST)
    grid.paste(tile, ((k % columns) * (2 * w + 8) + 2, (k // columns) * (h + 4) + 2))
  grid.save(path)
  return path
