"""Dynamic batching: a bounded queue of requests merged into a few fixed, pre-compiled batch sizes.

One worker thread per batcher takes whatever is queued (waiting at most `max_delay` for more while the
batch is below the largest size, when the previous batch showed concurrent requests), pads it up to the next compiled size, runs the function once and hands
each request its rows. Padding to fixed sizes means every shape was compiled during warm-up, so no
request waits for a compile. Results travel through `concurrent.futures.Future`s, which asyncio awaits
with `asyncio.wrap_future`; a cancelled (timed-out) request is skipped before it costs device time.
"""
import concurrent.futures
import logging
import queue
import threading
import time

import numpy as np

log = logging.getLogger("imgrec")


class QueueFull(Exception):
  pass


class _Item:
  __slots__ = ("images", "future")

  def __init__(self, images):
    self.images, self.future = images, concurrent.futures.Future()


_STOP = object()


def pad_size(n, sizes):
  """The smallest compiled size >= n (sizes sorted ascending; n <= sizes[-1])."""
  for s in sizes:
    if s >= n:
      return s
  raise ValueError(f"batch of {n} is larger than the largest compiled size {sizes[-1]}")


class Batcher:
  """`fn(padded_batch) -> np.ndarray` for each size in `batch_sizes`; `submit(images) -> Future` of its rows."""

  def __init__(self, fn, batch_sizes, max_delay_s=0.001, max_queue=256, on_batch=None, name="batcher"):
    self.fn, self.sizes = fn, sorted(set(batch_sizes))
    self.max_delay, self.on_batch = max_delay_s, on_batch
    self.queue = queue.Queue(max_queue)
    self._merged = False
    self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
    self.thread.start()

  def depth(self):
    return self.queue.qsize()

  def submit(self, images):
    item = _Item(images)
    try:
      self.queue.put_nowait(item)
    except queue.Full:
      raise QueueFull(f"queue full ({self.queue.maxsize} requests waiting)")
    return item.future

  def close(self):
    """Finishes everything already queued, then stops the worker."""
    self.queue.put(_STOP)
    self.thread.join()

  def _loop(self):
    largest = self.sizes[-1]
    while True:
      item = self.queue.get()
      if item is _STOP:
        return
      items, n, stop = [item], len(item.images), False
      # Wait for more only under concurrency (the last batch merged several requests): a lone client
      # would otherwise pay the full delay on every request.
      deadline = time.monotonic() + (self.max_delay if self._merged else 0.0)
      while n < largest:
        try:  # everything already waiting, then up to the deadline for more
          nxt = self.queue.get_nowait() if self.queue.qsize() else self.queue.get(
              timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
          break
        if nxt is _STOP:
          stop = True
          break
        items.append(nxt)
        n += len(nxt.images)
      self._merged = len(items) > 1
      self._run(items)
      if stop:
        return

  def _run(self, items):
    live = [it for it in items if it.future.set_running_or_notify_cancel()]
    if not live:
      return
    try:
      x = np.concatenate([it.images for it in live]) if len(live) > 1 else live[0].images
      outs, largest = [], self.sizes[-1]
      for start in range(0, len(x), largest):
        chunk = x[start:start + largest]
        size = pad_size(len(chunk), self.sizes)
        if size != len(chunk):
          chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        outs.append(np.asarray(self.fn(chunk))[:min(largest, len(x) - start)])
        if self.on_batch:
          self.on_batch(size, min(largest, len(x) - start))
      y = np.concatenate(outs) if len(outs) > 1 else outs[0]
    except Exception as e:  # reported to every waiting request, the worker lives on
      log.exception("batch failed")
      for it in live:
        it.future.set_exception(e)
      return
    start = 0
    for it in live:
      it.future.set_result(y[start:start + len(it.images)])
      start += len(it.images)
