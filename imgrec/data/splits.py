"""Splits of the classification task: random access to a data set's examples by index.

ArraySplit holds arrays in memory (digits, IDX). FileSplit (image files) and TfdsSplit (tfds
records) are indexes whose examples are decoded and preprocessed when read (`example`), in the
data workers during training. Every split gives what the task contract (imgrec/tasks) asks of one:
`len(split)`, `split.spec` ({"image": ((H, W, C), uint8), "label": ((), int32)}) and
`split.example(i, train, rng)` -> {"image", "label"} (None for an unreadable image under skip); and, for
classification's own commands, `split.labels` (read without decoding any image) and `split.get(indices)`
-> (uint8 [N, H, W, C], int32 [N]) with the eval preprocessing.
"""
import dataclasses
import functools
import os

import numpy as np

from imgrec.data import preprocess
from imgrec.errors import UserError


@dataclasses.dataclass
class ArraySplit:
  """A split held in memory."""
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self):
    return len(self.labels)

  def get(self, indices):
    return self.images[indices], self.labels[indices]

  @property
  def spec(self):
    return spec(self.images.shape[1:])

  def take(self, indices):
    """{feature: [len(indices), ...]} at once: the pipeline's fast path for in-memory splits."""
    return {"image": self.images[indices], "label": self.labels[indices]}

  def example(self, i, train, rng):
    del train, rng  # in-memory images are used as they are; augmentation happens on device
    return {"image": self.images[i], "label": self.labels[i]}


def spec(image_shape):
  """A classification example's features: {name: (shape, numpy dtype)}."""
  return {"image": (tuple(int(d) for d in image_shape), np.uint8), "label": ((), np.int32)}


@dataclasses.dataclass(frozen=True)
class Reading:
  """How an encoded split's examples become images; shared by its subsets and sent to the workers."""
  image_shape: tuple     # (H, W, C) after preprocessing
  pp_train: str
  pp_eval: str
  on_bad_image: str = "error"  # error | skip
  workers: int = -1            # data worker processes for the pipeline (-1: one per core)

  @functools.cached_property
  def ops(self):
    return {True: preprocess.parse(self.pp_train), False: preprocess.parse(self.pp_eval)}


class EncodedSplit:
  """Base of splits whose examples are decoded when read: subclasses give `reading`, `__len__`,
  `labels`, `raw(i) -> (encoded bytes or array, label or other target)` and `describe(i)` (the file,
  for errors)."""

  @property
  def spec(self):
    return spec(self.reading.image_shape)

  def read(self, i, train, rng):
    """(uint8 [H, W, C] after the train or eval preprocessing, the plan's affine map from source to
    output pixels (preprocess.process_with_map), the target `raw` gave); None for an unreadable image
    under data.on_bad_image="skip"."""
    r = self.reading
    try:
      data, target = self.raw(i)
      image, affine = preprocess.process_with_map(r.ops[train], data, r.image_shape[2], rng)
    except preprocess.BadImage as e:
      if r.on_bad_image == "skip":
        return None
      raise UserError(f"unreadable image {self.describe(i)}: {e}; remove or replace it, "
                      "or set --config.data.on_bad_image=skip") from None
    if image.shape != tuple(r.image_shape):
      raise UserError(f"image {self.describe(i)} is {image.shape[1]}x{image.shape[0]} after "
                      f"{r.pp_train if train else r.pp_eval!r}, but this data set's images are "
                      f"{r.image_shape[1]}x{r.image_shape[0]}: add resize(N) or central_crop(N) to data.pp_train "
                      "and data.pp_eval, or set data.image_size")
    return image, affine, target

  def example(self, i, train, rng):
    """{"image": uint8 [H, W, C] after the train or eval preprocessing, "label"}; None for an unreadable
    image under data.on_bad_image="skip"."""
    got = self.read(i, train, rng)
    return None if got is None else {"image": got[0], "label": np.int32(got[2])}

  def get(self, indices):
    """Eval-preprocessed images (black for an unreadable one under skip) and labels."""
    indices = np.asarray(indices).reshape(-1)
    images = np.zeros((len(indices), *self.reading.image_shape), np.uint8)
    for k, i in enumerate(indices):
      example = self.example(int(i), False, np.random.default_rng([0, int(i)]))
      if example is not None:
        images[k] = example["image"]
    return images, self.labels[indices]


class FileSplit(EncodedSplit):
  """Image files by index. Only the names are in memory (one utf-8 blob plus offsets: a million
  ImageNet names take ~40 MB), so the index is cheap to build and to send to each worker."""

  def __init__(self, root, dirs, dir_index, blob, offsets, reading=None):
    self.root, self.dirs, self.dir_index, self.blob, self.offsets = root, dirs, dir_index, blob, offsets
    self.labels, self.reading = dir_index, reading  # labels: class = folder until a source remaps them

  def __len__(self):
    return len(self.labels)

  def describe(self, i):
    name = self.blob[self.offsets[i]:self.offsets[i + 1]].decode()
    return os.path.join(self.root, self.dirs[self.dir_index[i]], name)

  def raw(self, i):
    try:
      with open(self.describe(i), "rb") as f:
        return f.read(), self.labels[i]
    except OSError as e:
      raise preprocess.BadImage(str(e)) from None


class TfdsSplit(EncodedSplit):
  """Random access into a tfds data source; decodes only the records asked for."""

  def __init__(self, source, reading, name=""):
    self.source, self.reading, self.name = source, reading, name

  def __len__(self):
    return len(self.source)

  def describe(self, i):
    return f"{self.name} record {i}"

  def raw(self, i):
    try:
      record = self.source[int(i)]
    except Exception as e:  # tfds raises many types for a record it cannot decode
      raise preprocess.BadImage(f"{type(e).__name__}: {e}") from None
    return np.asarray(record["image"]), int(record["label"])

  @functools.cached_property
  def labels(self):
    """Every record's label, parsed from the serialized records: no image is decoded."""
    raw = self.source.data_source  # the serialized records, under tfds' decoding
    return np.array([record_label(raw[i]) for i in range(len(self))], np.int32)


def record_label(record):
  """The "label" of one tfds record: a serialized tf.train.Example, or the generated example dict
  that `tfds.testing.mock_data` hands out in its place."""
  if isinstance(record, dict):
    return int(record["label"])
  from tensorflow_datasets.proto import tf_example_pb2  # tfds' own copy of the proto: no TensorFlow
  return int(tf_example_pb2.Example.FromString(record).features.feature["label"].int64_list.value[0])


class Subset:
  """Some examples of another split, by index, optionally relabelled (`relabel[old] -> new`)."""

  def __init__(self, split, indices, relabel=None):
    indices = np.asarray(indices, np.int64)
    if isinstance(split, Subset):  # flatten: one level of indirection whatever the nesting
      inner = split.relabel
      if inner is not None and relabel is not None:
        relabel = np.where(inner >= 0, relabel[np.maximum(inner, 0)], -1)
      else:
        relabel = inner if relabel is None else relabel
      split, indices = split.split, split.indices[indices]
    self.split, self.indices, self.relabel = split, indices, relabel

  def __len__(self):
    return len(self.indices)

  @property
  def reading(self):
    return self.split.reading

  @functools.cached_property
  def labels(self):
    labels = self.split.labels[self.indices]
    return labels if self.relabel is None else self.relabel[labels]

  def get(self, indices):
    images, labels = self.split.get(self.indices[np.asarray(indices)])
    return images, labels if self.relabel is None else self.relabel[labels]

  @property
  def spec(self):
    return self.split.spec

  def example(self, i, train, rng):
    example = self.split.example(int(self.indices[i]), train, rng)
    if example is not None and self.relabel is not None:
      example["label"] = np.int32(self.relabel[example["label"]])
    return example

  def describe(self, i):
    return self.split.describe(int(self.indices[i]))


def subset(split, indices, relabel=None):
  """The examples `indices` of `split` (relabelled by `relabel[old]`); in memory stays in memory."""
  indices = np.asarray(indices, np.int64)
  if isinstance(split, ArraySplit):
    labels = split.labels[indices]
    return ArraySplit(split.images[indices], labels if relabel is None else relabel[labels].astype(np.int32))
  return Subset(split, indices, relabel)


def dense_pp(size):
  """(pp_train, pp_eval) at `size` x `size` for a task whose targets move with the pixels (boxes, label maps):
  scale jitter with target-consistent crops and flips for training, the whole image letterboxed (aspect kept,
  padded) for evaluation and serving."""
  return f"decode|random_scale_crop({size})|flip", f"decode|letterbox({size})"


def fixed_size_reading(data_cfg, default_size, task):
  """The Reading of a source for a task that needs one fixed input size: data.pp_train / pp_eval, or `dense_pp`
  at data.image_size (or `default_size`); both must end at the same size."""
  pp_train, pp_eval = dense_pp(data_cfg.get("image_size", 0) or default_size)
  pp_train, pp_eval = data_cfg.get("pp_train") or pp_train, data_cfg.get("pp_eval") or pp_eval
  out_train, out_eval = (preprocess.output_size(preprocess.parse(p)) for p in (pp_train, pp_eval))
  if not out_train or out_train != out_eval:
    raise UserError(f"{task} needs one fixed input size, but data.pp_train {pp_train!r} and data.pp_eval "
                    f"{pp_eval!r} give {out_train} and {out_eval}: end both with letterbox(N), "
                    "random_scale_crop(N), central_crop(N) or resize(N)")
  return Reading((*out_eval, 3), pp_train, pp_eval, data_cfg.get("on_bad_image", "error"),
                 data_cfg.get("workers", -1))
