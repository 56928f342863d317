"""digit_boxes: the embedded detection set. No download: built deterministically from scikit-learn's
bundled 8x8 digits (or, with glyphs="fashion_mnist", Fashion-MNIST's 28x28 items from the Debian package
dataset-fashion-mnist), pasted at random sizes and places on textured canvases, with exact boxes.

Each image: a canvas of `size` x `size` (noise, gradient or stripes), 1-6 digits upscaled to 12-48 px
(capped by the canvas), each in a colour far from the canvas behind it, overlapping earlier ones by at
most MAX_IOU. A box is the tight bounds of its glyph's visible pixels. Train and test draw from disjoint
halves of the 1797 digits (Fashion-MNIST: its train and t10k files). Image i of a split depends only
on (seed, split, i): asking for more images leaves the first ones as they were.
"""
import io
import json
import os

import cv2
import numpy as np
import tqdm
from PIL import Image, ImageDraw

from imgrec.data import sources
from imgrec.errors import UserError

CLASS_NAMES = tuple(str(d) for d in range(10))
GLYPHS = {"digits": CLASS_NAMES, "fashion_mnist": sources.FASHION_MNIST_CLASSES}  # glyph set -> class names
CATEGORY_IDS = tuple(range(1, 11))  # COCO-style ids (COCO's start at 1): digit d is category d + 1
SPLITS = ("train", "test")
GLYPH_SEED = 4321     # the fixed draw that gives train and test their halves of the glyphs
MAX_IOU = 0.2         # limited overlap between objects of one image
ALPHA_VISIBLE = 0.3   # a glyph pixel counts towards its box from this opacity up


def glyphs(split, kind="digits"):
  """(uint8 [n, h, w] glyph images 0..255, int32 [n] classes) of a split: its half of sklearn's digits, or
  Fashion-MNIST's train or t10k file."""
  if kind not in GLYPHS:
    raise UserError(f"unknown glyph set {kind!r} for digit_boxes; use {' or '.join(GLYPHS)}")
  if kind == "fashion_mnist":
    prefix = "train" if split == "train" else "t10k"
    paths = [os.path.join(sources.FASHION_MNIST_DIR, f"{prefix}-{k}-idx{n}-ubyte.gz") for k, n in (("images", 3),
                                                                                                  ("labels", 1))]
    if not all(map(os.path.isfile, paths)):
      raise UserError(f"Fashion-MNIST glyphs need {paths[0]}: apt-get install -y dataset-fashion-mnist, "
                      "or use the digits")
    return sources.read_idx(paths[0]), sources.read_idx(paths[1]).astype(np.int32)
  from sklearn.datasets import load_digits
  d = load_digits()
  order = np.random.default_rng(GLYPH_SEED).permutation(len(d.target))
  half = order[:len(order) // 2] if split == "train" else order[len(order) // 2:]
  return np.round(d.images[half] * (255.0 / 16.0)).astype(np.uint8), d.target[half].astype(np.int32)


def canvas(rng, size):
  """A textured float [size, size, 3] background in 0..255: smooth noise, a gradient or stripes."""
  kind = rng.integers(3)
  base = rng.uniform(0, 255, 3)
  if kind == 0:
    noise = cv2.resize(rng.uniform(-60, 60, (6, 6, 3)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    out = base + noise + rng.normal(0, 8, (size, size, 3))
  else:
    t = np.linspace(0, 1, size)
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]
    wave = u if kind == 1 else np.sin(u * rng.uniform(8, 30)) * 0.5 + 0.5
    out = base + (wave[..., None] - 0.5) * rng.uniform(40, 120, 3)
  return np.clip(out, 0, 255)


def _iou(box, others):
  if not len(others):
    return np.zeros(0)
  o = np.asarray(others)
  w = np.clip(np.minimum(box[2], o[:, 2]) - np.maximum(box[0], o[:, 0]), 0, None)
  h = np.clip(np.minimum(box[3], o[:, 3]) - np.maximum(box[1], o[:, 1]), 0, None)
  inter = w * h
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / (area(np.asarray(box)) + area(o) - inter)


def image(seed, split, i, size, source, with_labels=False):
  """(uint8 [size, size, 3], float32 [n, 4] boxes x0, y0, x1, y1, int32 [n] digits) of image i; with
  `with_labels` also its exact label map uint8 [size, size]: 0 on the canvas, digit + 1 on each glyph's visible
  pixels (alpha >= ALPHA_VISIBLE; a later glyph covers an earlier one, as in the image)."""
  pics, digits = source
  rng = np.random.default_rng([seed, SPLITS.index(split), i])
  out = canvas(rng, size)
  labels = np.zeros((size, size), np.uint8)
  boxes, classes = [], []
  for _ in range(int(rng.integers(1, 7))):
    for _ in range(20):  # placements tried before this object is left out
      k = int(rng.integers(len(digits)))
      side = int(rng.integers(12, min(48, size // 2) + 1))
      alpha = cv2.resize(pics[k].astype(np.float32) / 255.0, (side, side), interpolation=cv2.INTER_LINEAR)
      ys, xs = np.nonzero(alpha >= ALPHA_VISIBLE)
      x, y = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
      box = (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)
      if (_iou(box, boxes) <= MAX_IOU).all():
        break
    else:
      continue
    behind = out[y:y + side, x:x + side].mean((0, 1))
    colour = np.where(behind > 127, rng.uniform(0, 60, 3), rng.uniform(195, 255, 3))  # contrast with the canvas
    a = np.where(alpha >= ALPHA_VISIBLE, alpha, 0.0)[..., None]  # nothing faint outside the box
    out[y:y + side, x:x + side] = out[y:y + side, x:x + side] * (1 - a) + colour * a
    labels[y:y + side, x:x + side][a[..., 0] > 0] = int(digits[k]) + 1
    boxes.append(box)
    classes.append(int(digits[k]))
  got = (np.round(out).astype(np.uint8), np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int32))
  return got + (labels,) if with_labels else got


def generate(split, n, size, seed=0, progress=False, kind="digits"):
  """(uint8 [n, size, size, 3], list of n box arrays, list of n class arrays) of a split."""
  source = glyphs(split, kind)
  images = np.zeros((n, size, size, 3), np.uint8)
  boxes, classes = [], []
  for i in tqdm.trange(n, desc=f"digit_boxes {split}", unit="img", disable=not progress):
    images[i], b, c = image(seed, split, i, size, source)
    boxes.append(b)
    classes.append(c)
  return images, boxes, classes


def coco_dict(boxes, classes, names, class_names=CLASS_NAMES):
  """The COCO-format annotation dict of a generated split (images named by `names`)."""
  anns = []
  images = []
  for n, (b, c) in enumerate(zip(boxes, classes)):
    images.append({"id": n + 1, "file_name": names[n], "width": 0, "height": 0})
    for box, cls in zip(b.tolist(), c.tolist()):
      w, h = box[2] - box[0], box[3] - box[1]
      anns.append({"id": len(anns) + 1, "image_id": n + 1, "category_id": CATEGORY_IDS[cls],
                   "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
  categories = [{"id": i, "name": name} for i, name in zip(CATEGORY_IDS, class_names)]
  return {"info": {"description": "imgrec digit_boxes: glyphs pasted on textured canvases"},
          "images": images, "annotations": anns, "categories": categories}


def write_coco(directory, sizes, size, seed=0, kind="digits"):
  """Writes DIR/annotations/instances_{train,test}.json, DIR/{train,test}/NNNNNN.png and DIR/preview.png;
  `coco:DIR` reads it back. Returns {split: number of boxes}."""
  os.makedirs(os.path.join(directory, "annotations"), exist_ok=True)
  counts = {}
  for split, n in zip(SPLITS, sizes):
    images, boxes, classes = generate(split, n, size, seed, progress=True, kind=kind)
    os.makedirs(os.path.join(directory, split), exist_ok=True)
    names = [f"{i + 1:06d}.png" for i in range(n)]
    for a, name in zip(tqdm.tqdm(images, desc=f"writing {split}", unit="img"), names):
      Image.fromarray(a).save(os.path.join(directory, split, name))
    d = coco_dict(boxes, classes, names, GLYPHS[kind])
    for entry in d["images"]:
      entry["width"] = entry["height"] = size
    with open(os.path.join(directory, "annotations", f"instances_{split}.json"), "w") as f:
      json.dump(d, f)
    counts[split] = sum(len(b) for b in boxes)
    if split == "train":
      preview(os.path.join(directory, "preview.png"), images[:16], boxes[:16], classes[:16], GLYPHS[kind])
  return counts


def preview(path, images, boxes, classes, class_names, columns=4, scale=3):
  """A PNG grid of images (upscaled `scale`x) with their boxes and class names drawn."""
  n = len(images)
  h, w = images.shape[1] * scale, images.shape[2] * scale
  rows = -(-n // columns)
  grid = Image.new("RGB", (columns * (w + 4), rows * (h + 4)), "white")
  palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
             (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
  for k in range(n):
    tile = Image.fromarray(images[k]).resize((w, h), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(tile)
    for box, c in zip(np.asarray(boxes[k]).reshape(-1, 4), classes[k]):
      colour = palette[int(c) % len(palette)]
      draw.rectangle([v * scale for v in box], outline=colour, width=2)
      draw.text((box[0] * scale + 2, box[1] * scale + 1), class_names[int(c)], fill=colour)
    grid.paste(tile, ((k % columns) * (w + 4) + 2, (k // columns) * (h + 4) + 2))
  buf = io.BytesIO()
  grid.save(buf, "PNG")
  with open(path, "wb") as f:
    f.write(buf.getvalue())
  return path
