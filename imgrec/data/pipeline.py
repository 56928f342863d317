"""Shuffling, batching, per-process sharding and prefetching to device.

The order of training examples is a pure function of (seed, epoch), and batch `step` is
a pure function of (seed, step): a resumed run sees exactly the batches it would have seen.
Each process reads only its own slice of every global batch.
"""
import queue
import threading

import jax
import numpy as np

from imgrec.errors import UserError


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


def local_slice(global_array):
  """This process's contiguous part of a global batch array."""
  n = len(global_array) // jax.process_count()
  return global_array[jax.process_index() * n:(jax.process_index() + 1) * n]


def to_global(sharding, local_batch):
  """Assembles process-local numpy arrays into global jax arrays sharded by `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def prefetch(iterator, size):
  """Runs `iterator` on a background thread, `size` items ahead. Errors re-raise here."""
  if size <= 0:
    yield from iterator
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


def train_batches(split, global_batch, seed, start_step, end_step, sharding, prefetch_size=2):
  """Yields (step, {"image", "label"}) global device arrays for training."""
  def produce():
    for step, idx in train_indices(len(split), global_batch, seed, start_step, end_step):
      images, labels = split.get(local_slice(idx))
      yield step, to_global(sharding, {"image": images, "label": labels})
  return prefetch(produce(), prefetch_size)


def eval_batches(split, global_batch, sharding, prefetch_size=2, transform=None):
  """Yields {"image", "label", "mask"} global device arrays covering the split once.

  `transform(images, batch_index) -> images` alters each process-local uint8 batch first (corruptions)."""
  def produce():
    for i, (idx, mask) in enumerate(eval_indices(len(split), global_batch)):
      images, labels = split.get(local_slice(idx))
      if transform is not None:
        images = transform(images, i)
      yield to_global(sharding, {"image": images, "label": labels, "mask": local_slice(mask)})
  return prefetch(produce(), prefetch_size)


def image_stats(split, max_examples=10000):
  """Per-channel mean and std of a split's pixels in [0, 1] (on a fixed sample if large)."""
  n = len(split)
  idx = np.arange(n) if n <= max_examples else np.random.default_rng(0).choice(n, max_examples, replace=False)
  images, _ = split.get(np.sort(idx))
  x = images.astype(np.float64) / 255.0
  mean = x.mean(axis=(0, 1, 2))
  std = np.maximum(x.std(axis=(0, 1, 2)), 1e-3)
  return [float(m) for m in mean], [float(s) for s in std]
