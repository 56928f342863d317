"""Batches for training and evaluation: order, per-process slices, decoding workers, device arrays.

Order: the examples of batch `step` are a pure function of (seed, step) (one permutation per
epoch), so a resumed run starts at its step without replaying earlier batches. Each process
reads only its contiguous slice of every global batch. Per-example randomness of the host
preprocessing (crops, flips) is keyed by (seed, step, position in the global batch), never by
which worker made the batch, so any number of workers gives the same batches.

In-memory splits (digits, IDX) are indexed directly on a background thread. Encoded splits
(folder:, tfds:) run on Grain: a `MapDataset` over step numbers whose map makes this process's
slice of that batch (read, decode, preprocess: imgrec/data/preprocess.py), then `mp_prefetch`
over `data.workers` processes. Each worker makes whole batches; Grain hands them back in step
order through shared memory, and a background thread turns them into global jax arrays.
"""
import dataclasses
import functools
import logging
import os
import queue
import threading
import time

import grain
import jax
import numpy as np
from absl import flags

from imgrec.errors import UserError

log = logging.getLogger("imgrec")

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's constants, for weights trained with them
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)  # the ImageNet constants of a 1-channel image: their luma
ARRAY_STATS_EXAMPLES = 10000  # in-memory splits are cheap to read: normalisation uses this many
SUBSTITUTE_TRIES = 100  # unreadable training images skipped in a row before giving up


def in_memory(split):
  """Whether a split is held in memory as arrays: it then gives `take(indices) -> {feature: [N, ...]}`, read
  directly on a background thread (no decoding, no worker processes)."""
  return hasattr(split, "take")


def steps_per_epoch(num_examples, global_batch):
  if global_batch > num_examples:
    raise UserError(f"batch_size {global_batch} is larger than the training split ({num_examples} examples)")
  return num_examples // global_batch  # the incomplete last batch of an epoch is dropped


def epoch_permutation(seed, epoch, num_examples):
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_indices(num_examples, global_batch, seed, start_step, end_step):
  """Yields (step, global index array) for steps [start_step, end_step)."""
  per_epoch = steps_per_epoch(num_examples, global_batch)
  perm, perm_epoch = None, None
  for step in range(start_step, end_step):
    epoch, i = divmod(step, per_epoch)
    if epoch != perm_epoch:
      perm, perm_epoch = epoch_permutation(seed, epoch, num_examples), epoch
    yield step, perm[i * global_batch:(i + 1) * global_batch]


def eval_indices(num_examples, global_batch):
  """Yields (index array, mask) covering every example once; the last batch is padded."""
  for start in range(0, num_examples, global_batch):
    idx = np.arange(start, start + global_batch)
    mask = idx < num_examples
    yield np.where(mask, idx, 0), mask


def _slice(array, process_index, process_count):
  n = len(array) // process_count
  return array[process_index * n:(process_index + 1) * n]


def local_slice(global_array):
  """This process's contiguous part of a global batch array."""
  return _slice(global_array, jax.process_index(), jax.process_count())


def to_global(sharding, local_batch):
  """Assembles process-local numpy arrays into global jax arrays sharded by `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def prefetch(iterator, size):
  """Runs `iterator` on a background thread, `size` items ahead. Errors re-raise here; closing
  this generator stops the thread, which then closes `iterator` (and so any workers behind it)."""
  if size <= 0:
    try:
      yield from iterator
    finally:
      getattr(iterator, "close", lambda: None)()
    return
  q = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def work():
    try:
      for item in iterator:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            pass
        if stop.is_set():
          return
      q.put(done)
    except BaseException as e:  # handed to the consumer
      q.put(e)
    finally:
      getattr(iterator, "close", lambda: None)()

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    # Let the thread close `iterator` (and stop any worker processes) before the caller goes on:
    # at interpreter exit Grain's own finaliser would race with it.
    thread.join(timeout=60)


# ----------------------------------------------------------------------------- worker side
# These callables are pickled into the Grain worker processes: plain data and numpy only.


def _empty(spec, n, fill=np.empty):
  """{feature: array [n, *shape]} for a split's `spec`: the batch the examples are written into."""
  return {name: fill((n, *shape), dtype) for name, (shape, dtype) in spec.items()}


@dataclasses.dataclass
class TrainBatch:
  """step -> this process's slice of training batch `step`: the split's features, stacked, and "bad".

  An unreadable image under data.on_bad_image="skip" is replaced by the next example of the
  epoch's order that reads; "bad" names the skipped files."""
  split: object
  seed: int
  global_batch: int
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    self._perm = (None, None)

  def __call__(self, step):
    n = len(self.split)
    epoch, i = divmod(int(step), steps_per_epoch(n, self.global_batch))
    if self._perm[0] != epoch:
      self._perm = (epoch, epoch_permutation(self.seed, epoch, n))
    perm = self._perm[1]
    local = self.global_batch // self.process_count
    first = self.process_index * local  # position of this slice in the global batch
    out = _empty(self.split.spec, local)
    bad = []
    for k in range(local):
      pos = i * self.global_batch + first + k
      rng = np.random.default_rng([self.seed, int(step), first + k])
      for attempt in range(SUBSTITUTE_TRIES):
        index = int(perm[(pos + attempt) % n])
        example = self.split.example(index, True, rng)
        if example is not None:
          break
        bad.append(self.split.describe(index))
      else:
        raise UserError(f"{SUBSTITUTE_TRIES} unreadable images in a row (last: {bad[-1]}); "
                        "is the data set damaged?")
      for name in out:
        out[name][k] = example[name]
    return {**out, "bad": bad}


@dataclasses.dataclass
class EvalBatch:
  """b -> this process's slice of eval batch b over `indices` (all examples when None), padded: the
  split's features, stacked, with "mask" and "bad"; padding and skipped unreadable images have mask False
  (and zeros)."""
  split: object
  global_batch: int
  indices: object = None
  process_index: int = 0
  process_count: int = 1

  def __call__(self, b):
    n = len(self.split) if self.indices is None else len(self.indices)
    pos = np.arange(b * self.global_batch, (b + 1) * self.global_batch)
    pos = _slice(pos, self.process_index, self.process_count)
    mask = pos < n
    idx = np.where(mask, pos, 0) if self.indices is None else np.asarray(self.indices)[np.where(mask, pos, 0)]
    out = _empty(self.split.spec, len(idx), np.zeros)
    bad = []
    for k, index in enumerate(idx):
      if mask[k]:
        example = self.split.example(int(index), False, np.random.default_rng([0, int(index)]))
        if example is None:
          mask[k] = False
          bad.append(self.split.describe(int(index)))
        else:
          for name in out:
            out[name][k] = example[name]
    return {**out, "mask": mask, "bad": bad}


def _watch_parent(parent, worker_index, worker_count):
  """Grain worker init: exit when the process that started the pipeline (pid `parent`) dies, also
  when it died while this worker was still starting (kill -9 leaves no orphans)."""
  del worker_index, worker_count

  def watch():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(1)
  threading.Thread(target=watch, daemon=True).start()


# ----------------------------------------------------------------------------- main-process side


def default_workers():
  """One decoding process per core this process may use, up to 16."""
  return max(1, min(len(os.sched_getaffinity(0)), 16))


def _workers(split, workers):
  workers = split.reading.workers if workers is None else workers
  return default_workers() if workers < 0 else workers


def _grain_flags():
  """Grain reads absl flags (mp_prefetch reads grain_enable_multiprocess_worker_profiling); in a
  program that never parsed absl flags that raises UnparsedFlagAccessError: take the defaults."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _grain(fn, start, stop, workers, buffer):
  """fn(start), ..., fn(stop - 1) in order, computed in `workers` Grain processes (0: here)."""
  _grain_flags()
  ds = grain.MapDataset.range(start, stop).map(fn).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(1, buffer)),
                        worker_init_fn=functools.partial(_watch_parent, os.getpid()))
  it = iter(ds)
  try:
    for item in it:
      yield {k: _out_of_shared_memory(v) for k, v in item.items()}
  finally:
    it.close()


def _out_of_shared_memory(value):
  """A copy of a Grain shared-memory array, whose segment is unlinked now: Grain would unlink it on a
  thread whenever the last view dies, and keeps each worker's last element alive, so that a run
  ending right after its last batch left segments behind (a resource_tracker warning at exit)."""
  if not isinstance(value, grain.multiprocessing.SharedMemoryArray):
    return value
  out = np.array(value)
  if value.shm is not None and getattr(value, "_unlink_on_del", False):
    value.shm.unlink()
    value._unlink_on_del = False  # pylint: disable=protected-access  (unlinked once, here)
  return out


class _BadImages:
  """Counts and names the unreadable images a pipeline skipped (data.on_bad_image="skip")."""

  def __init__(self):
    self.names = []

  def note(self, names):
    for name in names:
      self.names.append(name)
      log.warning("skipped unreadable image %s (%d so far)", name, len(self.names))

  def report(self, what):
    if self.names:
      log.warning("%s skipped %d unreadable image(s), e.g. %s", what, len(self.names), self.names[0])


def train_batches(split, global_batch, seed, start_step, end_step, sharding, prefetch_size=2, workers=None):
  """Yields (step, {feature: global device array}) for training (the features of `split.spec`); `.close()` stops it.

  `workers`: decoding processes for encoded splits (None: the split's data.workers; -1: one
  per core; 0: decode on the background thread here). In-memory splits need none."""
  if in_memory(split):
    def produce():
      for step, idx in train_indices(len(split), global_batch, seed, start_step, end_step):
        yield step, to_global(sharding, split.take(local_slice(idx)))
    return prefetch(produce(), prefetch_size)
  steps_per_epoch(len(split), global_batch)  # a batch larger than the split is an error before any work
  fn = TrainBatch(split, seed, global_batch, jax.process_index(), jax.process_count())

  def produce():
    bad = _BadImages()
    it = _grain(fn, start_step, end_step, _workers(split, workers), prefetch_size)
    try:
      for step, local in zip(range(start_step, end_step), it):
        bad.note(local.pop("bad"))
        yield step, to_global(sharding, local)
    finally:
      it.close()
      bad.report("training")
  return prefetch(produce(), max(prefetch_size, 1))


def eval_batches(split, global_batch, sharding, prefetch_size=2, workers=None, transform=None):
  """Yields {feature: global device array} (`split.spec`'s features and "mask") covering the split once, the
  last batch padded (mask False). `transform(images, batch_index) -> images`, when given, alters each
  process-local uint8 batch on the host first (robustness's corruptions)."""
  count = -(-len(split) // global_batch)

  def finish(b, local):
    if transform is not None:
      local["image"] = transform(local["image"], b)
    return to_global(sharding, local)

  if in_memory(split):
    def produce():
      for b, (idx, mask) in enumerate(eval_indices(len(split), global_batch)):
        yield finish(b, {**split.take(local_slice(idx)), "mask": local_slice(mask)})
    return prefetch(produce(), prefetch_size)
  fn = EvalBatch(split, global_batch, None, jax.process_index(), jax.process_count())

  def produce():
    bad = _BadImages()
    it = _grain(fn, 0, count, _workers(split, workers), prefetch_size)
    try:
      for b, local in enumerate(it):
        bad.note(local.pop("bad"))
        yield finish(b, local)
    finally:
      it.close()
      bad.report("evaluation")
  return prefetch(produce(), max(prefetch_size, 1))


def image_stats(split, max_examples=ARRAY_STATS_EXAMPLES, workers=None):
  """Per-channel mean and std of a split's pixels in [0, 1] (on a fixed sample if large); an
  encoded split's sample is decoded (eval preprocessing) in the workers, 256 images at a time."""
  n = len(split)
  idx = np.arange(n) if n <= max_examples else np.sort(np.random.default_rng(0).choice(n, max_examples, replace=False))
  if in_memory(split):
    x = split.take(idx)["image"].astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = np.maximum(x.std(axis=(0, 1, 2)), 1e-3)
    return [float(m) for m in mean], [float(s) for s in std]
  fn = EvalBatch(split, 256, idx)
  total, total_sq, count = 0.0, 0.0, 0
  # A sample of a few batches decodes faster here than worker processes start.
  it = _grain(fn, 0, -(-len(idx) // 256), _workers(split, workers) if len(idx) > 512 else 0, 2)
  try:
    for local in it:
      x = local["image"][local["mask"]].astype(np.float64) / 255.0
      total = total + x.sum(axis=(0, 1, 2))
      total_sq = total_sq + np.square(x).sum(axis=(0, 1, 2))
      count += x.shape[0] * x.shape[1] * x.shape[2]
  finally:
    it.close()
  if not count:
    raise UserError("no readable image in the normalisation sample; check the data set")
  mean = total / count
  std = np.maximum(np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0)), 1e-3)
  return [float(m) for m in mean], [float(s) for s in std]


def normalization(data_cfg, split):
  """(mean, std) per channel of [0, 1] pixels for a run: data.norm="imagenet" (torchvision's
  constants), else data.mean / data.std when set, else estimated on the training split (up to
  data.stats_examples images of an encoded split, decoded in the workers)."""
  channels = split.spec["image"][0][2]
  if data_cfg.norm == "imagenet":
    if channels == 1:
      return [float(np.dot(LUMA, IMAGENET_MEAN))], [float(np.dot(LUMA, IMAGENET_STD))]
    return list(IMAGENET_MEAN), list(IMAGENET_STD)
  if data_cfg.mean:
    if len(data_cfg.mean) != channels or len(data_cfg.std) != channels:
      raise UserError(f"data.mean {tuple(data_cfg.mean)} and data.std {tuple(data_cfg.std)} need one value per "
                      f"channel ({channels})")
    return [float(m) for m in data_cfg.mean], [float(s) for s in data_cfg.std]
  if in_memory(split):
    return image_stats(split)
  return image_stats(split, data_cfg.stats_examples)
