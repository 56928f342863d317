"""Data sources by name. Each gives uint8 NHWC images, int32 labels and class names.

  digits          scikit-learn's bundled 8x8 digits: the embedded default, no download
  fashion_mnist   Fashion-MNIST IDX files from Debian's `dataset-fashion-mnist`
  mnist           MNIST IDX files (set data.dir)
  idx:DIR         any MNIST-format IDX files in DIR (`.gz` or raw)
  folder:DIR      one subfolder per class of PNG/JPEG files; DIR/train + DIR/test, or a split
  tfds:NAME       tensorflow-datasets by name, through `tfds.data_source` (random access,
                  no TensorFlow needed; works under `tfds.testing.mock_data`)

A split is random-access (`len(split)`, `split.get(indices)`), so the pipeline shuffles and
shards any source the same way, and big tfds sets are never loaded whole.
"""
import dataclasses
import gzip
import os
import struct

import numpy as np

from imgrec.errors import UserError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# The held-out split of sources without one is drawn with this fixed seed, so that the
# test set never changes with the training seed.
SPLIT_SEED = 1234


@dataclasses.dataclass
class ArraySplit:
  """A split held in memory."""
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self):
    return len(self.labels)

  def get(self, indices):
    return self.images[indices], self.labels[indices]


@dataclasses.dataclass
class Dataset:
  name: str
  splits: dict
  class_names: tuple
  image_shape: tuple  # (H, W, C)

  @property
  def num_classes(self):
    return len(self.class_names)

  def split(self, name):
    if name not in self.splits:
      raise UserError(f"data set {self.name!r} has no split {name!r}; it has: {', '.join(self.splits)}")
    return self.splits[name]


@dataclasses.dataclass
class Subset:
  """Some examples of another split, by index."""
  split: object
  indices: np.ndarray

  def __len__(self):
    return len(self.indices)

  def get(self, indices):
    return self.split.get(self.indices[np.asarray(indices)])


def _held_out(labels, fraction, what="data.test_fraction"):
  """Bool mask of a deterministic stratified hold-out of `fraction` of each class."""
  if not 0 < fraction < 1:
    raise UserError(f"{what} must be between 0 and 1, got {fraction}")
  rng = np.random.default_rng(SPLIT_SEED)
  held = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    rng.shuffle(idx)
    held[idx[:max(1, int(round(len(idx) * fraction)))]] = True
  return held


def _holdout(images, labels, test_fraction):
  """Deterministic stratified train/test split for sources that ship none."""
  is_test = _held_out(labels, test_fraction)
  return {"train": ArraySplit(images[~is_test], labels[~is_test]),
          "test": ArraySplit(images[is_test], labels[is_test])}


def with_validation(ds, train_split, fraction):
  """Carves a stratified "val" split out of `train_split` (fixed seed, independent of the run's)."""
  split = ds.split(train_split)
  labels = split.labels if isinstance(split, ArraySplit) else split.get(np.arange(len(split)))[1]
  is_val = _held_out(labels, fraction, "data.val_fraction")
  splits = dict(ds.splits, **{train_split: Subset(split, np.flatnonzero(~is_val)),
                               "val": Subset(split, np.flatnonzero(is_val))})
  return dataclasses.replace(ds, splits=splits)


def _resize(images, size):
  """Resizes uint8 NHWC images to size x size with antialiased bilinear filtering."""
  from PIL import Image
  if not size or images.shape[1:3] == (size, size):
    return images
  out = np.empty((len(images), size, size, images.shape[-1]), np.uint8)
  for i, im in enumerate(images):
    pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
    out[i] = np.asarray(pil.resize((size, size), Image.BILINEAR)).reshape(size, size, -1)
  return out


def _load_digits(cfg):
  from sklearn.datasets import load_digits
  d = load_digits()
  # Pixel values are 0..16; spread them over the uint8 range like any other image.
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int32)
  splits = _holdout(_resize(images, cfg.image_size), labels, cfg.test_fraction)
  return Dataset("digits", splits, tuple(str(i) for i in range(10)), splits["train"].images.shape[1:])


def read_idx(path):
  """Reads one IDX file (MNIST format), gzipped or raw, into a numpy array."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserError(f"cannot read IDX file {path}: {e}") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise UserError(f"{path} is not an IDX file (bad magic number)")
  dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
  if data[2] not in dtypes:
    raise UserError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
  ndim = data[3]
  shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
  array = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise UserError(f"{path} is truncated: header says {shape}, found {array.size} values")
  return array.reshape(shape)


def _find_idx(directory, stem):
  for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  return None


def _load_idx(directory, cfg, name, class_names=None):
  if not os.path.isdir(directory):
    hint = ("install it with `apt-get install -y dataset-fashion-mnist`, or set --config.data.dir=DIR"
            if directory == FASHION_MNIST_DIR else "set --config.data.dir=DIR (or data.source=idx:DIR)")
    raise UserError(f"data directory {directory} for {name!r} not found: {hint}")
  splits = {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    image_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    label_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    if image_path is None or label_path is None:
      raise UserError(f"{directory} lacks {prefix}-images-idx3-ubyte[.gz] or {prefix}-labels-idx1-ubyte[.gz] "
                      "(the MNIST file names)")
    images, labels = read_idx(image_path), read_idx(label_path).astype(np.int32)
    if images.ndim != 3 or len(images) != len(labels):
      raise UserError(f"{image_path} and {label_path} do not match: {images.shape} images, {labels.shape} labels")
    splits[split] = ArraySplit(_resize(images[..., None].astype(np.uint8), cfg.image_size), labels)
  if class_names is None:
    n = int(max(splits["train"].labels.max(), splits["test"].labels.max())) + 1
    class_names = FASHION_MNIST_CLASSES if "fashion" in directory.lower() and n == 10 else tuple(
        str(i) for i in range(n))
  return Dataset(name, splits, tuple(class_names), splits["train"].images.shape[1:])


def _read_image(path, size, mode):
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      im = im.convert(mode)
      if size:
        im = im.resize((size, size), Image.BILINEAR)
      return np.asarray(im).reshape(im.size[1], im.size[0], -1)
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise UserError(f"unreadable image {path}: {e}; remove it or replace it") from None


def _scan_classes(directory):
  classes = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
  files = []
  for label, c in enumerate(classes):
    for root, _, names in sorted(os.walk(os.path.join(directory, c))):
      files += [(os.path.join(root, n), label) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
  return classes, files


def _load_folder(directory, cfg):
  from PIL import Image
  if not os.path.isdir(directory):
    raise UserError(f"image folder {directory} not found; data.source=folder:DIR needs one subfolder per class")
  has_splits = all(os.path.isdir(os.path.join(directory, s)) for s in ("train", "test"))
  parts = {s: _scan_classes(os.path.join(directory, s)) for s in ("train", "test")} if has_splits else {
      "all": _scan_classes(directory)}
  classes = parts["train" if has_splits else "all"][0]
  if has_splits and parts["test"][0] != classes:
    raise UserError(f"{directory}/train and {directory}/test have different class subfolders")
  all_files = [f for _, files in parts.values() for f, _ in files]
  if not classes or not all_files:
    raise UserError(f"no class subfolders with {'/'.join(IMAGE_EXTENSIONS)} files found in {directory}")
  # One channel only if every image is grayscale; colour otherwise.
  modes = set()
  for f in all_files:
    try:
      with Image.open(f) as im:
        modes.add(im.mode)
    except Exception as e:
      raise UserError(f"unreadable image {f}: {e}; remove it or replace it") from None
  mode = "L" if modes <= {"L", "1", "I;16", "I"} else "RGB"
  size = cfg.image_size

  def load(files):
    images = [_read_image(f, size, mode) for f, _ in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
      raise UserError(f"images in {directory} have different sizes {sorted(shapes)[:3]}...; "
                      "set --config.data.image_size=N to resize them")
    return np.stack(images).astype(np.uint8), np.array([l for _, l in files], np.int32)

  if has_splits:
    splits = {s: ArraySplit(*load(parts[s][1])) for s in ("train", "test")}
  else:
    splits = _holdout(*load(parts["all"][1]), cfg.test_fraction)
  return Dataset(f"folder:{directory}", splits, tuple(classes), splits["train"].images.shape[1:])


class TfdsSplit:
  """Random access into a tfds data source; decodes only the records asked for."""

  def __init__(self, source, image_size):
    self.source = source
    self.image_size = image_size

  def __len__(self):
    return len(self.source)

  def get(self, indices):
    records = [self.source[int(i)] for i in np.asarray(indices).reshape(-1)]
    images = np.stack([np.asarray(r["image"]) for r in records])
    if images.ndim == 3:
      images = images[..., None]
    images = _resize(images.astype(np.uint8), self.image_size)
    return images, np.array([r["label"] for r in records], np.int32)


def _load_tfds(name, cfg):
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise UserError("tfds: sources need tensorflow-datasets: pip install tensorflow-datasets") from None
  try:
    builder = tfds.builder(name, data_dir=cfg.dir or None)
    info = builder.info
    # Only the splits the run uses: opening one costs a file scan on big data sets.
    splits = {split: TfdsSplit(tfds.data_source(name, split=split, data_dir=cfg.dir or None), cfg.image_size)
              for split in dict.fromkeys((cfg.train_split, cfg.eval_split))}
  except Exception as e:  # tfds raises many types for unknown or not-prepared data sets
    raise UserError(f"tensorflow-datasets could not open {name!r}: {type(e).__name__}: {str(e)[:300]} "
                    "(prepare it with `tfds build` or set data.dir to its data_dir)") from None
  features = info.features
  if "image" not in features or "label" not in features:
    raise UserError(f"tfds data set {name!r} needs 'image' and 'label' features; it has {list(features)}")
  class_names = tuple(features["label"].names)
  first = next(iter(splits.values()))
  shape = first.get([0])[0].shape[1:]
  return Dataset(f"tfds:{name}", splits, class_names, shape)


def load(cfg):
  """Opens the data source named by `cfg` (the config's `data` section)."""
  return _select(_open(cfg), tuple(cfg.get("classes", ())), cfg.get("train_per_class", 0))


def _labels(split):
  if isinstance(split, ArraySplit):
    return split.labels
  return np.concatenate([split.get(np.arange(i, min(i + 1024, len(split))))[1] for i in range(0, len(split), 1024)])


def _select(ds, classes, train_per_class):
  """Keeps `classes` (relabelled 0..k-1 in the order given) and at most `train_per_class`
  training examples per class, drawn with a fixed seed so runs compare on the same examples."""
  if not classes and not train_per_class:
    return ds
  classes = tuple(int(c) for c in classes) or tuple(range(ds.num_classes))
  bad = [c for c in classes if not 0 <= c < ds.num_classes]
  if bad or len(set(classes)) != len(classes):
    raise UserError(f"data.classes {classes} must be distinct class indices in 0..{ds.num_classes - 1}")
  relabel = np.full(ds.num_classes, -1, np.int32)
  relabel[list(classes)] = np.arange(len(classes))
  rng = np.random.default_rng(SPLIT_SEED + 1)
  splits = {}
  for name, split in ds.splits.items():
    labels = _labels(split)
    keep = []
    for c in classes:
      idx = np.flatnonzero(labels == c)
      if name == "train" and train_per_class:
        if len(idx) < train_per_class:
          raise UserError(f"data.train_per_class={train_per_class} but class {c} has {len(idx)} training examples")
        idx = np.sort(rng.choice(idx, train_per_class, replace=False))
      keep.append(idx)
    keep = np.sort(np.concatenate(keep))
    images, old = split.get(keep)
    splits[name] = ArraySplit(images, relabel[old])
  return Dataset(ds.name, splits, tuple(ds.class_names[c] for c in classes), ds.image_shape)


def _open(cfg):
  source = cfg.source
  kind, _, arg = source.partition(":")
  if source == "digits":
    return _load_digits(cfg)
  if source == "fashion_mnist":
    return _load_idx(cfg.dir or FASHION_MNIST_DIR, cfg, source, FASHION_MNIST_CLASSES)
  if source == "mnist":
    if not cfg.dir:
      raise UserError("data.source='mnist' needs the directory of its IDX files: --config.data.dir=DIR")
    return _load_idx(cfg.dir, cfg, source, tuple(str(i) for i in range(10)))
  if kind == "idx" and arg:
    return _load_idx(arg, cfg, source)
  if kind == "folder" and arg:
    return _load_folder(arg, cfg)
  if kind == "tfds" and arg:
    return _load_tfds(arg, cfg)
  raise UserError(f"unknown data source {source!r}; use digits, fashion_mnist, mnist, idx:DIR, folder:DIR or tfds:NAME")
