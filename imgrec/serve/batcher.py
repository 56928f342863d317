"""Dynamic batching: a bounded queue of requests merged into a few fixed, pre-compiled batch sizes.

  submit(images) -> queue -> collector thread -> replica (device) -> one completion thread per replica -> Future

The collector takes the first request of a burst and keeps the batch open until `max_delay` after that
request arrived, or until it holds the largest compiled size. While the replica is idle and the batch holds
as many rows as the last one, it also closes once a quarter of `max_delay` passes with no new request: a
lone client does not wait out the window, a burst is merged, and a steady set of clients is waited for. Requests that arrived while every replica was busy are therefore taken at once, and the
requests of batch n+1 are received and parsed (on the event loop) while batch n computes. A batch runs as
the cover by compiled sizes with the least padding (`cover_plans`). Launching only dispatches (JAX runs
asynchronously), so with `pipeline` > 1 the collector also merges, copies and dispatches batch n+1 while
batch n computes; replicas (one per device) take batches in turn. A completion thread per replica waits for
its results in launch order and hands each request its rows. Padding to fixed sizes means every shape was
compiled during warm-up, so no request waits for a compile. A cancelled (timed-out) request is dropped before
it costs device time.
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
  __slots__ = ("images", "future", "arrival")

  def __init__(self, images):
    self.images, self.future, self.arrival = images, concurrent.futures.Future(), time.monotonic()


_STOP = object()


# A model's outputs are an array or a dict of them (a task's named outputs): rows are taken, joined and handed
# out alike in every one.
def _rows(result, take):
  return {k: _rows(v, take) for k, v in result.items()} if isinstance(result, dict) else np.asarray(result)[:take]


def _concat(outs):
  if isinstance(outs[0], dict):
    return {k: _concat([o[k] for o in outs]) for k in outs[0]}
  return np.concatenate(outs) if len(outs) > 1 else outs[0]


def _part(y, start, stop):
  return {k: _part(v, start, stop) for k, v in y.items()} if isinstance(y, dict) else y[start:stop]


def pad_size(n, sizes):
  """The smallest compiled size >= n (sizes sorted ascending; n <= sizes[-1])."""
  for s in sizes:
    if s >= n:
      return s
  raise ValueError(f"batch of {n} is larger than the largest compiled size {sizes[-1]}")


def cover_plans(sizes, overhead=2):
  """For every row count n <= max(sizes): the compiled sizes that cover n rows at the least cost, a run
  costing its size plus `overhead` rows (least padding, then fewest runs): e.g. with sizes 1, 2, 4, ..., 64,
  33 rows run as 32+1 and 44 as 32+8+4, where padding to the next size would compute 64."""
  sizes = sorted(set(sizes))
  best, plans = [0], [[]]
  for n in range(1, sizes[-1] + 1):
    c, _, plan = min((s + overhead + best[n - min(s, n)], len(plans[n - min(s, n)]) + 1,
                      plans[n - min(s, n)] + [s]) for s in sizes)
    best.append(c)
    plans.append(sorted(plan, reverse=True))
  return plans


class Replica:
  """One device's copy of the model: `launch(padded) -> result` may return before the work is done
  (np.asarray(result) waits for it)."""

  def __init__(self, launch, name="replica"):
    self.launch, self.name = launch, name
    self.in_flight = 0
    self.done = queue.SimpleQueue()


class Batcher:
  """`submit(images) -> Future` of the rows `fn(images)` gives, run in merged, padded batches.

  `replicas`: a `fn(padded_batch) -> array` or a list of `Replica`. `pipeline`: batches in flight per
  replica. `on_batch(n)`: called with the row count of every merged batch."""

  def __init__(self, replicas, batch_sizes, max_delay_s=0.001, max_queue=256, on_batch=None, name="batcher",
               pipeline=1):
    self.replicas = replicas if isinstance(replicas, list) else [Replica(replicas)]
    self.sizes = sorted(set(batch_sizes))
    self.plans = cover_plans(self.sizes)
    self.max_delay, self.on_batch, self.pipeline = max_delay_s, on_batch, pipeline
    self._last_n = 0  # rows in the last batch: the clients a steady load will send again
    self.queue = queue.Queue(max_queue)
    self._slots = threading.Condition()
    self._turn = 0
    self.threads = [threading.Thread(target=self._collect, name=name, daemon=True)]
    self.threads += [threading.Thread(target=self._complete, args=(r,), name=f"{name}-{r.name}", daemon=True)
                     for r in self.replicas]
    for t in self.threads:
      t.start()

  def depth(self):
    """Requests waiting to be batched."""
    return self.queue.qsize()

  def submit(self, images):
    item = _Item(images)
    try:
      self.queue.put_nowait(item)
    except queue.Full:
      raise QueueFull(f"queue full ({self.queue.maxsize} requests waiting)")
    return item.future

  def close(self):
    """Finishes everything already queued, then stops the threads."""
    self.queue.put(_STOP)
    for t in self.threads:
      t.join()

  # ---------------------------------------------------------------- collector

  def _replica(self):
    """The next replica in turn that has room for another batch (waits for one)."""
    with self._slots:
      while True:
        for i in range(len(self.replicas)):
          r = self.replicas[(self._turn + i) % len(self.replicas)]
          if r.in_flight < self.pipeline:
            self._turn = (self._turn + i + 1) % len(self.replicas)
            r.in_flight += 1
            return r
        self._slots.wait()

  def _collect(self):
    largest, carry = self.sizes[-1], None
    while True:
      replica = self._replica()
      item = carry if carry is not None else self.queue.get()
      carry = None
      if item is _STOP:
        break
      items, n = [item], len(item.images)
      deadline = item.arrival + self.max_delay  # the window opens with the burst's first request
      # While the replica is idle, waiting costs latency for sure: once the batch holds as many rows as the
      # last one, the window also closes after a quarter of it passes with no new request.
      idle, last, gap = replica.in_flight == 1, item.arrival, self.max_delay / 4
      while n < largest:
        try:  # everything already waiting, then up to the deadline for more
          left = deadline - time.monotonic()
          if idle and n >= self._last_n:
            left = min(left, last + gap - time.monotonic())
          nxt = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
        except queue.Empty:
          break
        if nxt is not _STOP:
          last = nxt.arrival
        if nxt is _STOP or n + len(nxt.images) > largest:
          carry = nxt  # starts the next batch
          break
        items.append(nxt)
        n += len(nxt.images)
      self._last_n = n
      self._launch(replica, items)
    for r in self.replicas:
      r.done.put(_STOP)

  def _launch(self, replica, items):
    live = [it for it in items if it.future.set_running_or_notify_cancel()]
    launched = time.monotonic()
    for it in live:  # when its queue wait ended (the server's per-model statistics)
      it.future.launched = launched
    n = sum(len(it.images) for it in live)
    if not n:
      for it in live:
        it.future.set_exception(ValueError("the request holds no images"))
      return self._release(replica)
    try:
      chunks, start, plan = [], 0, self._plan(n)
      x = np.concatenate([it.images for it in live]) if len(live) > 1 else live[0].images
      for size in plan:
        take = min(size, n - start)
        chunk = x[start:start + take]
        if take != size:  # pad with zeros to the compiled size
          chunk = np.concatenate([chunk, np.zeros((size - take, *x.shape[1:]), x.dtype)])
        chunks.append((replica.launch(chunk), take))
        start += take
    except Exception as e:  # reported to every waiting request; the batcher lives on
      log.exception("batch failed")
      for it in live:
        it.future.set_exception(e)
      return self._release(replica)
    if self.on_batch:
      self.on_batch(n)
    replica.done.put((live, chunks))

  def _plan(self, n):
    largest = self.sizes[-1]
    return self.plans[largest] * (n // largest) + self.plans[n % largest]

  def _release(self, replica):
    with self._slots:
      replica.in_flight -= 1
      self._slots.notify()

  # ---------------------------------------------------------------- completion

  def _complete(self, replica):
    while True:
      job = replica.done.get()
      if job is _STOP:
        return
      live, chunks = job
      try:
        y = _concat([_rows(result, take) for result, take in chunks])  # waits for the device
      except Exception as e:
        log.exception("batch failed")
        for it in live:
          it.future.set_exception(e)
      else:
        start = 0
        for it in live:
          it.future.set_result(_part(y, start, start + len(it.images)))
          start += len(it.images)
      finally:
        self._release(replica)

