"""Data sources by name: random-access splits of uint8 HWC images, int32 labels and class names.

  digits          scikit-learn's bundled 8x8 digits: the embedded default, no download
  fashion_mnist   Fashion-MNIST IDX files from Debian's `dataset-fashion-mnist`
  mnist           MNIST IDX files (set data.dir)
  idx:DIR         any MNIST-format IDX files in DIR (`.gz` or raw)
  folder:DIR      one subfolder per class of image files: DIR/train plus DIR/val, DIR/validation
                  or DIR/test (the ImageNet layout `train/<wnid>/*.JPEG`), or one flat set that is
                  split with data.test_fraction
  tfds:NAME       tensorflow-datasets by name, through `tfds.data_source` (random access,
                  no TensorFlow needed; works under `tfds.testing.mock_data`)

digits and IDX live in memory (`ArraySplit`). Folders and tfds are indexes (imgrec/data/splits.py):
a folder is scanned for file names only (no image is opened at start-up but a small sample for the
channel count and sizes), tfds records are read when asked for. Their images are decoded and
preprocessed per example (imgrec/data/preprocess.py: `data.pp_train`, `data.pp_eval`), in the data
workers during training.
"""
import dataclasses
import gzip
import logging
import os
import struct

import numpy as np

from imgrec.data import preprocess
from imgrec.data.splits import ArraySplit, FileSplit, Reading, TfdsSplit, subset
from imgrec.errors import UserError

log = logging.getLogger("imgrec")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLIT_DIRS = ("train", "val", "validation", "test")  # folder:DIR subfolders read as splits
HEADER_SAMPLE = 32    # files whose headers give a folder's channel count and sizes
SMALL_IMAGE = 256     # a folder whose sampled images share one size up to this is "small fixed-size", not photos
# The held-out split of sources without one is drawn with this fixed seed, so that the
# test set never changes with the training seed.
SPLIT_SEED = 1234


@dataclasses.dataclass
class Dataset:
  name: str
  splits: dict
  class_names: tuple
  image_shape: tuple  # (H, W, C) after preprocessing
  pp_train: str = ""  # host preprocessing ("" for in-memory sources: their arrays are used as they are)
  pp_eval: str = ""

  @property
  def num_classes(self):
    return len(self.class_names)

  def split(self, name):
    if name not in self.splits:
      raise UserError(f"data set {self.name!r} has no split {name!r}; it has: {', '.join(self.splits)}")
    return self.splits[name]


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


def _holdout(split, test_fraction):
  """Deterministic stratified train/test split for sources that ship none."""
  is_test = _held_out(split.labels, test_fraction)
  return {"train": subset(split, np.flatnonzero(~is_test)), "test": subset(split, np.flatnonzero(is_test))}


def with_validation(ds, train_split, fraction):
  """Carves a stratified "val" split out of `train_split` (fixed seed, independent of the run's)."""
  if "val" in ds.splits:
    raise UserError(f"data set {ds.name!r} already has a val split; set data.val_fraction=0 and "
                    "data.eval_split=val to use it")
  split = ds.split(train_split)
  is_val = _held_out(split.labels, fraction, "data.val_fraction")
  splits = dict(ds.splits, **{train_split: subset(split, np.flatnonzero(~is_val)),
                               "val": subset(split, np.flatnonzero(is_val))})
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
  splits = _holdout(ArraySplit(_resize(images, cfg.image_size), labels), cfg.test_fraction)
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


def _image_files(path, prefix=""):
  """Sorted image file names under `path` (recursively), as `prefix + name`. Names only: a name with
  an image extension is taken as a file without a stat call, so 10^6 files index in seconds."""
  names = os.listdir(path)
  files = sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
  if prefix:
    files = [prefix + n for n in files]
  for d in sorted(n for n in names if not n.lower().endswith(IMAGE_EXTENSIONS)):
    if os.path.isdir(os.path.join(path, d)):
      files += _image_files(os.path.join(path, d), f"{prefix}{d}/")
  return files


def scan_classes(directory):
  """(class names, FileSplit of every image under `directory`/<class>/, reading unset). The names
  (relative to their class folder) are packed class by class into one utf-8 blob, so no per-file
  Python object outlives its class."""
  with os.scandir(directory) as entries:
    classes = sorted(e.name for e in entries if e.is_dir())
  chunks, lengths, counts = [], [], []
  for c in classes:
    names = _image_files(os.path.join(directory, c))
    data = "".join(names).encode()
    chunks.append(data)
    if len(data) == sum(map(len, names)):  # ASCII: characters are bytes
      lengths.append(np.fromiter(map(len, names), np.int64, len(names)))
    else:
      lengths.append(np.array([len(n.encode()) for n in names], np.int64))
    counts.append(len(names))
  offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths or [np.zeros(0, np.int64)]))]).astype(np.int64)
  dir_index = np.repeat(np.arange(len(classes), dtype=np.int32), counts)
  return classes, FileSplit(directory, tuple(classes), dir_index, b"".join(chunks), offsets)


def sample_headers(paths, on_bad_image):
  """(width, height, channels) of a few files; unreadable ones are errors, or left out under skip."""
  out = []
  for path in paths:
    try:
      with open(path, "rb") as f:
        out.append(preprocess.header(f.read()))
    except (OSError, preprocess.BadImage) as e:
      if on_bad_image != "skip":
        raise UserError(f"unreadable image {path}: {e}; remove or replace it, "
                        "or set --config.data.on_bad_image=skip") from None
  return out


def reading_for(cfg, channels, photo, size):
  """The Reading of an encoded source: its pp strings (the config's, or the defaults) and image shape.
  `size` (h, w) is the source's image size when fixed, else None."""
  pp_train, pp_eval = preprocess.defaults(photo, cfg.image_size)
  pp_train, pp_eval = cfg.get("pp_train") or pp_train, cfg.get("pp_eval") or pp_eval
  out_train, out_eval = (preprocess.output_size(preprocess.parse(p)) for p in (pp_train, pp_eval))
  if out_train and out_eval and out_train != out_eval:
    raise UserError(f"data.pp_train {pp_train!r} makes {out_train[1]}x{out_train[0]} images but data.pp_eval "
                    f"{pp_eval!r} makes {out_eval[1]}x{out_eval[0]}: the model needs one input size")
  hw = out_eval or out_train or size
  if hw is None:
    raise UserError(f"the images have different sizes and {pp_eval!r} keeps them: add resize(N) or "
                    "central_crop(N) to data.pp_train and data.pp_eval, or set data.image_size")
  return Reading((*hw, channels), pp_train, pp_eval, cfg.get("on_bad_image", "error"), cfg.get("workers", -1))


def _nth(parts, k):
  """(split, index) of the k-th file over all of a folder's splits."""
  for _, split in parts.values():
    if k < len(split):
      return split, k
    k -= len(split)
  raise IndexError(k)


def _load_folder(directory, cfg):
  if not os.path.isdir(directory):
    raise UserError(f"image folder {directory} not found; data.source=folder:DIR needs one subfolder per class")
  present = [s for s in SPLIT_DIRS if os.path.isdir(os.path.join(directory, s))]
  subdirs = {e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")}
  name = f"folder:{directory}"
  if present and subdirs <= set(SPLIT_DIRS) and "train" not in present:
    raise UserError(f"{directory} holds only {', '.join(s + '/' for s in present)} and no train/: folder:DIR reads "
                    "DIR/train/<class>/ (with DIR/val/<class>/ or DIR/test/<class>/), or DIR/<class>/ split with "
                    "data.test_fraction")
  if present == ["train"] and subdirs == {"train"}:  # a lone split folder, not a class named "train"
    log.warning("folder %s holds only train/: its classes are read from %s/train, and data.test_fraction of it is "
                "held out as test", directory, directory)
    directory = os.path.join(directory, "train")
    present = []
  has_splits = "train" in present and len(present) > 1
  parts = {s: scan_classes(os.path.join(directory, s)) for s in present} if has_splits else {
      "all": scan_classes(directory)}
  classes = parts["train" if has_splits else "all"][0]
  total = sum(len(split) for _, split in parts.values())
  if not classes or not total:
    raise UserError(f"no class subfolders with {'/'.join(IMAGE_EXTENSIONS)} files found in {directory}")
  on_bad = cfg.get("on_bad_image", "error")
  picks = [_nth(parts, int(k)) for k in np.unique(np.linspace(0, total - 1, min(total, HEADER_SAMPLE)).astype(int))]
  sample = sample_headers([split.describe(i) for split, i in picks], on_bad)
  if not sample:
    raise UserError(f"none of the sampled images in {directory} could be read")
  channels = cfg.get("channels", 0) or (1 if all(c == 1 for _, _, c in sample) else 3)
  sizes = {(h, w) for w, h, _ in sample}
  photo = len(sizes) > 1 or max(max(s) for s in sizes) > SMALL_IMAGE
  reading = reading_for(cfg, channels, photo, None if len(sizes) > 1 else next(iter(sizes)))
  splits = {}
  for s, (split_classes, split) in parts.items():
    unknown = sorted(set(split_classes) - set(classes))
    if unknown:
      raise UserError(f"{split.root} has class folders that {directory}/train lacks: {', '.join(unknown[:5])}")
    to_train = np.array([classes.index(c) for c in split_classes] or [0], np.int32)
    split.labels, split.reading = to_train[split.labels], reading
    splits[s] = split
  if not has_splits:
    splits = _holdout(splits["all"], cfg.test_fraction)
  log.info("folder %s: %s; preprocessing train %r, eval %r", directory,
           ", ".join(f"{s} {len(v)}" for s, v in splits.items()), reading.pp_train, reading.pp_eval)
  return Dataset(name, splits, tuple(classes), reading.image_shape, reading.pp_train, reading.pp_eval)


def _load_tfds(name, cfg):
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise UserError("tfds: sources need tensorflow-datasets: pip install tensorflow-datasets") from None
  try:
    builder = tfds.builder(name, data_dir=cfg.dir or None)
    info = builder.info
    # Only the splits the run uses: opening one costs a file scan on big data sets.
    sources = {split: tfds.data_source(name, split=split, data_dir=cfg.dir or None)
               for split in dict.fromkeys((cfg.train_split, cfg.eval_split))}
  except Exception as e:  # tfds raises many types for unknown or not-prepared data sets
    raise UserError(f"tensorflow-datasets could not open {name!r}: {type(e).__name__}: {str(e)[:300]} "
                    "(prepare it with `tfds build` or set data.dir to its data_dir)") from None
  features = info.features
  if "image" not in features or "label" not in features:
    raise UserError(f"tfds data set {name!r} needs 'image' and 'label' features; it has {list(features)}")
  shape = tuple(features["image"].shape)  # (H, W, C), None where it varies
  channels = cfg.get("channels", 0) or shape[-1] or 3
  photo = None in shape[:2]
  reading = reading_for(cfg, channels, photo, None if photo else shape[:2])
  splits = {split: TfdsSplit(src, reading, f"tfds:{name}/{split}") for split, src in sources.items()}
  return Dataset(f"tfds:{name}", splits, tuple(features["label"].names), reading.image_shape, reading.pp_train,
                 reading.pp_eval)


def load(cfg):
  """Opens the data source named by `cfg` (the config's `data` section)."""
  return _select(_open(cfg), tuple(cfg.get("classes", ())), cfg.get("train_per_class", 0))


def _select(ds, classes, train_per_class):
  """Keeps `classes` (relabelled 0..k-1 in the order given) and at most `train_per_class`
  training examples per class, drawn with a fixed seed so runs compare on the same examples.
  Works on labels only: no image is decoded."""
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
    labels = split.labels
    keep = []
    for c in classes:
      idx = np.flatnonzero(labels == c)
      if name == "train" and train_per_class:
        if len(idx) < train_per_class:
          raise UserError(f"data.train_per_class={train_per_class} but class {c} has {len(idx)} training examples")
        idx = np.sort(rng.choice(idx, train_per_class, replace=False))
      keep.append(idx)
    splits[name] = subset(split, np.sort(np.concatenate(keep)), relabel)
  return dataclasses.replace(ds, splits=splits, class_names=tuple(ds.class_names[c] for c in classes))


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
