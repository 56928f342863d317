"""Experiment tracking: TensorBoard event files beside `metrics.jsonl`, and the profiler window.

`metrics.jsonl` stays the source of truth; `Tracker` mirrors it into `W/tensorboard/` for
`tensorboard --logdir runs/` (each workdir is a run there):
  train/{loss,accuracy,grad_norm,lr,img_per_sec}  at every training-log step (every number the record has)
  {val,test}/{accuracy,loss,...}                 at every evaluation, and the final test evaluation
  train/augmented_examples                       an image, at the run's first evaluation
  test/{confusion_matrix,reliability}            the task's images of the selected model's final evaluation

Resume: TensorBoard keeps every event file, and a run killed after its last checkpoint has already
written steps that the resumed run writes again. The resumed writer starts its file with
TensorBoard's own purge marker (a SessionLog START at resume step + 1, tensorboardX's `purge_step`):
the event reader drops every earlier event from that step on, so each step is shown once.

The writer is tensorboardX: maintained, pure Python over protobuf, no TensorFlow (clu and
flax.metrics.tensorboard need TensorFlow, torch.utils.tensorboard needs torch), and it writes
the purge marker.

`Profiler` traces the train steps of `config.profile = "START:STOP"` with `jax.profiler` into
`W/profile/` (TensorBoard's profile tab, or Perfetto: perfetto_trace.json.gz beside it).
"""
import functools
import glob
import io
import numbers
import os
import sys
import time

import jax
import numpy as np
from PIL import Image

from imgrec import workdir as wd
from imgrec.errors import UserError

TB_DIR = "tensorboard"
PROFILE_DIR = "profile"
NOT_SCALARS = ("step", "examples")  # numbers of a metrics.jsonl record that are not curves


def render(plot, *args):
  """HxWx3 uint8 image of a figure: `plot(*args, file)` writes a PNG to the file object it is given."""
  buf = io.BytesIO()
  plot(*args, buf)
  buf.seek(0)
  return np.asarray(Image.open(buf).convert("RGB"))


def _writer(workdir, suffix="", purge_step=None):
  # Imported when a run writes events, not with imgrec.train. tensorboardX also imports torch whenever it
  # is installed (2-3 s here), only to accept torch tensors: we pass numpy, so it is kept from loading.
  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX expects
  try:
    import tensorboardX
  finally:
    if block:
      del sys.modules["torch"]
  return tensorboardX.SummaryWriter(os.path.join(workdir, TB_DIR), filename_suffix=_suffix() + suffix,
                                    purge_step=purge_step)


def _suffix():
  # TensorBoard reads a run's event files in name order, and purges by that order. tensorboardX names
  # files after the second they were opened: nanoseconds keep two writers of one second apart, in order.
  return f".{time.time_ns()}"


class Tracker:
  """TensorBoard writer of one run; every method is a no-op when `enabled` is false (other hosts).

  `start_step` is the step the run resumes from: events at or before it exist already, and the
  writer purges what a killed earlier process wrote after it.
  """

  def __init__(self, workdir, cfg, start_step=0, enabled=True, preview=None):
    """`preview`: the task's augmented training examples, (plot function, its arguments but the file), or None."""
    self.cfg, self.start_step, self.step, self.preview = cfg, start_step, start_step, preview
    self.writer, self.logged = None, set()  # (prefix, step) written by this process
    if enabled:
      self.writer = _writer(workdir, purge_step=start_step + 1 if start_step else None)
    # The augmented examples go with the run's first evaluation: done already if one is on record.
    self.examples_due = preview is not None and not any(r["split"] != "train" and r["step"] <= start_step for r in wd.read_metrics(workdir))

  def _scalars(self, prefix, record):
    step = record["step"]
    if self.writer is None or step <= self.start_step or (prefix, step) in self.logged:
      return False  # on record already (the final evaluation of a run without val is its last one)
    self.logged.add((prefix, step))
    for k, v in record.items():  # whatever the task records: accuracy and loss, mAP, ...
      if k not in NOT_SCALARS and isinstance(v, numbers.Real) and not isinstance(v, bool):
        self.writer.add_scalar(f"{prefix}/{k}", v, step)
    self.step = max(self.step, step)
    return True

  def train(self, record):
    """A training record of metrics.jsonl ({"step", "loss", "accuracy", "lr", ...})."""
    self._scalars("train", record)

  def eval(self, record):
    """An evaluation ({"step", "split", "accuracy", "loss", ...}); the first one adds the augmented examples."""
    if not self._scalars(record["split"], record):
      return
    if self.examples_due:
      self.examples_due = False
      self.images(record["step"], {"train/augmented_examples": render(*self.preview)})
    self.writer.flush()  # an evaluation is worth seeing at once

  def end(self, result, images):
    """The final evaluation at the last step trained: its headline `result` ({"split", "accuracy", ...}) and the
    task's images of it ({tag: (plot function, its arguments but the file)}: classification's confusion matrix
    and reliability diagram)."""
    if not self._scalars(result["split"], {**result, "step": self.step}):
      return
    self.images(self.step, {tag: render(*plot) for tag, plot in images.items()})

  def images(self, step, images):
    """{tag: HxWxC uint8 array} at `step`."""
    if self.writer is None:
      return
    for tag, image in images.items():
      self.writer.add_image(tag, image, step, dataformats="HWC")

  def flush(self):
    if self.writer is not None:
      self.writer.flush()

  def close(self):
    if self.writer is not None:
      self.writer.close()
      self.writer = None


def parse_window(spec):
  """"START:STOP" -> (start, stop): the train steps [START, STOP) to trace; "" -> None."""
  if not spec:
    return None
  start, sep, stop = spec.partition(":")
  try:
    start, stop = int(start), int(stop)
  except ValueError:
    start = stop = None
  if not sep or start is None or not 0 <= start < stop:
    raise UserError(f"profile={spec!r}: give START:STOP, the train steps [START, STOP) to trace, e.g. 10:15")
  return start, stop


class Profiler:
  """Traces the steps of a window with jax.profiler; each step is annotated for the trace viewer.

  `out = profiler.step(fn, step, *args)` runs `fn(*args)` as train step number `step` (0-based). A context
  manager: a trace still open when the loop ends is closed.
  """

  def __init__(self, spec, out_dir):
    self.window, self.out_dir, self.active = parse_window(spec), out_dir, False

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def step(self, fn, step, *args):
    if self.window and not self.active and self.window[0] <= step < self.window[1]:
      jax.profiler.start_trace(self.out_dir, create_perfetto_trace=True)
      self.active, self.first = True, step
    self.last = step
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      out = fn(*args)
    if self.active and step + 1 >= self.window[1]:
      jax.block_until_ready(out)  # the device work of the last step belongs in the trace
      self.close()
    return out

  def close(self):
    """Ends a trace still open (the run ended inside the window) and says where it went."""
    if not self.active:
      return
    jax.profiler.stop_trace()
    self.active, self.window = False, None
    runs = sorted(glob.glob(os.path.join(self.out_dir, "plugins", "profile", "*")), key=os.path.getmtime)
    where = runs[-1] if runs else self.out_dir
    print(f"profile: steps {self.first}-{self.last} traced into {where} "
          f"(tensorboard --logdir {self.out_dir}: Profile tab; or perfetto_trace.json.gz in ui.perfetto.dev)",
          flush=True)
