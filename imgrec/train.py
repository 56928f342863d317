"""The trainer: `train(cfg, workdir)` reads top to bottom, in banner sections.

Everything it uses lies below it: the task (imgrec/tasks: data, inputs and loss, evaluation record, selection
direction, lines and images; `config.task`), the resume guard and the workdir lock (resume.py), the run on disk
(workdir.py), the pure step skeleton and the one evaluation loop (steps.py), the state (state.py), the optimiser
(optim.py), the input pipeline (data/). Nothing here names a task's targets or metrics but `loss`, `grad_norm`
and `finite`. Only the CLI and scripts import this module.

A run does not lose work. A config that would change the run already in the workdir is refused before anything
is written. A checkpoint is written only when every step before it had a finite loss and gradient norm (each step
reports `finite`, computed on device; the loop reads the flags as they become ready, without waiting, so a
non-finite step stops the run a few steps later at most, named, whatever log_every is) and the state itself is
finite. SIGTERM or SIGINT saves a checkpoint at the step reached and raises `Preempted` (exit 75 from the CLI);
a second signal exits at once.
"""
import os
import signal
import threading
import time

import jax
import numpy as np
import tqdm

from imgrec import checkpoint, compile_cache, config as config_lib, parallel, plots, resume, steps, tasks, tracking
from imgrec import transfer, workdir as wd
from imgrec.data import pipeline
from imgrec.errors import Preempted, UserError
from imgrec.state import variables

MAX_UNCHECKED = 8  # steps in flight whose finite flag is not read yet; past this the loop waits for the oldest
CURVES_EVERY_S = 30.0  # curves.png is redrawn at an evaluation at most this often (and always at the end)


def train(cfg, workdir, restart=False):
  """Trains `cfg` in `workdir`, resuming from its latest checkpoint. Returns (state, final eval metrics).

  A config that would change the run already in `workdir` is refused, unless `restart` moves that run aside to
  W/previous-<timestamp>/. SIGTERM or SIGINT: a checkpoint at the current step, then `Preempted` is raised."""
  config_lib.validate(cfg)
  task = tasks.for_config(cfg)  # what differs between tasks (imgrec/tasks); the rest of this file is shared
  compile_cache.enable(cfg.compile_cache)  # a second run loads its executables instead of compiling them

  # ---------------------------------------------------------------- devices and mesh
  parallel.initialize(cfg.parallel)
  mesh = parallel.make_mesh()
  parallel.check_batch(cfg.batch_size)
  batch_sharding = parallel.batch_sharding(mesh)
  is_main = jax.process_index() == 0

  with resume.lock(workdir, enabled=is_main), Signals() as stop:
    # -------------------------------------------------------------- data, and the resume guard
    ds, info, monitor = open_data(cfg, task)
    train_split = ds.split(cfg.data.train_split)
    per_epoch, total_steps = wd.schedule_lengths(cfg, len(train_split))
    for line in resume.prepare(workdir, cfg, info, restart, is_main):  # refuses before anything is written
      print(line, flush=True)

    # -------------------------------------------------------------- model and state
    built = wd.build(cfg, info, mesh)
    model, abstract, shardings = built.model, built.abstract, built.shardings
    mngr = checkpoint.manager(workdir, cfg.keep_checkpoints)
    state = restore_or_init(cfg, info, workdir, mngr, abstract, built.init, shardings, is_main)
    start_step = int(state.step)
    print(banner(cfg, ds, state, monitor, total_steps, per_epoch), flush=True)

    # -------------------------------------------------------------- compiled steps
    train_step = compile_train_step(cfg, task, model, built.tx, info, shardings, batch_sharding)
    eval_fn = task.make_eval_fn(model, info, cfg)

    def evaluate(state, split):  # -> (the record metrics.jsonl keeps, the task's full summary)
      out = steps.stream(eval_fn, variables(state), ds.split(split), cfg.batch_size, mesh, cfg.data.prefetch,
                         desc=f"eval {split}")
      record, summary = task.evaluate(out, ds.split(split), info, cfg)
      return {"split": split, **record}, summary

    # -------------------------------------------------------------- model selection
    best = Selection(cfg, task, workdir, enabled=cfg.data.val_fraction > 0)  # on a held-out val split, never test

    # -------------------------------------------------------------- loop
    log = TrainLog(cfg, task, workdir, built.lr, total_steps, start_step, is_main, ds)
    profiler = tracking.Profiler(cfg.profile, os.path.join(workdir, tracking.PROFILE_DIR))
    eval_every, ckpt_every = cfg.eval_every or per_epoch, cfg.checkpoint_every or per_epoch
    end_step = start_step if best.stop_early() else total_steps
    batches = pipeline.train_batches(train_split, cfg.batch_size, cfg.seed, start_step, end_step, batch_sharding,
                                     cfg.data.prefetch)
    result, done = None, start_step
    with log, profiler, checkpoint.closing(mngr), checkpoint.closing(best.mngr):  # saves finish however it ends
      for step, batch in stop.until(batches):
        state, step_metrics = profiler.step(train_step, step, state, batch)
        done = log.add(step, step_metrics)
        if done % cfg.log_every == 0 or done == total_steps:
          log.flush(done)
        if done % eval_every == 0 or done == total_steps:
          ensure_finite(done, state, log)  # nothing is evaluated, selected or saved from a non-finite state
          result, summary = evaluate(state, monitor)
          log.evaluation(done, result, best.update(done, result, state))
        if done % ckpt_every == 0 or done == total_steps or best.stop_early():
          save(mngr, done, state, log)
        if best.stop_early():
          log.write(f"early stop at step {done}: no better val {cfg.select_metric} for {best.since} evaluations")
          break
      batches.close()
      if stop and (mngr.latest_step() or 0) < done:
        save(mngr, done, state, log)  # the step the signal found
    if stop:
      raise stop.preempted(done, mngr)

    # -------------------------------------------------------------- final evaluation
    state = best.restore(workdir, abstract) or state  # the selected model, when there is one
    if best.enabled or result is None:  # test once on the selected model; or resumed an already finished run
      result, summary = evaluate(state, cfg.data.eval_split)
    log.finish(result, summary)
  return state, result


# ---------------------------------------------------------------------------- the sections' helpers

def open_data(cfg, task):
  """(the task's data set, its dataset.json info, the split evaluated during training). Evaluations during
  training, and model selection, use a held-out val split when there is one: never test."""
  ds = task.open_data(cfg)
  return ds, wd.data_info(cfg, ds), "val" if cfg.data.val_fraction > 0 else cfg.data.eval_split


def restore_or_init(cfg, info, workdir, mngr, abstract, init, shardings, is_main):
  """The newest readable checkpoint; a fresh state only when there is no checkpoint at all. Then the workdir is
  written: config.json and dataset.json; unreadable checkpoints newer than the one restored are moved to
  W/damaged-<timestamp>/ (the run writes those steps again, never over them); metrics.jsonl loses only the
  records newer than the step resumed from."""
  state = checkpoint.restore_latest(mngr, abstract)
  state = initial_state(cfg, init, shardings, workdir) if state is None else state
  if is_main:
    wd.write(workdir, cfg, info)
    dest = os.path.join(resume.set_aside_dir(workdir, "damaged"), os.path.basename(str(mngr.directory)))
    for path in checkpoint.set_aside(mngr, int(state.step), dest):
      print(f"moved the unreadable checkpoint to {path}; resuming from step {int(state.step)}", flush=True)
    wd.trim_metrics(workdir, int(state.step))
  parallel.sync("imgrec-restored")
  mngr.reload()  # the other processes see what the main one moved
  return state


def initial_state(cfg, init, shardings, workdir=None):
  """A fresh state, initialised in place; for fine-tuning, matching parameters come from another run."""
  state = jax.jit(init, out_shardings=shardings)()
  if cfg.transfer.init_from:
    state = transfer.init_from(state, cfg.transfer, shardings, workdir)
  return state


def banner(cfg, ds, state, monitor, total_steps, per_epoch):
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  start = int(state.step)
  origin = (f"resuming at step {start}" if start else f"from {cfg.transfer.init_from}" if cfg.transfer.init_from
            else "from scratch")
  return (f"imgrec: {cfg.model.name} ({n_params / 1e6:.3f}M params) on {ds.name} {tuple(ds.image_shape)}, "
          f"{len(ds.split(cfg.data.train_split))} train / {len(ds.split(monitor))} {monitor}, "
          f"{jax.device_count()} device(s) x {jax.process_count()} process(es), "
          f"{total_steps} steps ({per_epoch}/epoch), {origin}")


def compile_train_step(cfg, task, model, tx, info, shardings, batch_sharding):
  """`step(state, batch) -> (state, metrics)` over the task's inputs and loss, jitted with the state donated. A
  task's `aux` (classification's distillation teacher variables) is an argument of the compiled step, not
  constants inside it."""
  loss, aux = task.make_loss(cfg, info, lambda path: wd.restore(path, params_only=True))
  step = steps.make_train_step(model, tx, info["mean"], info["std"], task.make_inputs(cfg, info), loss, cfg)
  if aux is None:
    return jax.jit(step, in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None),
                   donate_argnums=(0,))
  step = jax.jit(step, in_shardings=(shardings, batch_sharding, None), out_shardings=(shardings, None),
                 donate_argnums=(0,))
  return lambda state, batch: step(state, batch, aux)


def ensure_finite(step, state, log):
  """Writes the pending training metrics, raising on a non-finite step; then checks the state itself."""
  log.flush(step)
  if not bool(steps.all_finite(state)):
    raise UserError(f"training diverged: the state after step {step} holds non-finite values (its loss and "
                    "gradient norm were finite); it is not saved. Train with a lower optim.lr or with "
                    "optim.grad_clip, in a new --workdir (or with --restart)")


def save(mngr, step, state, log):
  """Writes a checkpoint of `state` at `step`, once every step before it is known finite and so is the state."""
  ensure_finite(step, state, log)
  checkpoint.save(mngr, step, state)


class Signals:
  """SIGTERM and SIGINT while training (what preemptible VMs and Kubernetes send before a kill, and Ctrl-C):
  the first asks the loop to stop after the current step and save a checkpoint there; a second exits at once
  with 128 + the signal number. Installed on the main thread only (Python runs handlers there). True once a
  signal came; the loop checks it between steps, so no step, evaluation or save is cut off."""

  def __init__(self):
    self.received, self.previous = None, {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self.previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)

  def __bool__(self):
    return self.received is not None

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.received is not None:
      os.write(2, f"\nimgrec: second {name}: exiting now, without waiting for the checkpoint\n".encode())
      os._exit(128 + signum)
    self.received = name
    os.write(2, f"\nimgrec: {name}: saving a checkpoint at the current step, then exiting ({name} again exits at "
                "once)\n".encode())

  def preempted(self, step, mngr):
    latest = mngr.latest_step()
    saved = f"checkpoint {checkpoint.step_dir(mngr, latest)} written" if latest is not None else "no checkpoint yet"
    return Preempted(f"stopped by {self.received} at step {step}: {saved}; rerun the same command to resume")

  def until(self, batches):
    """`batches` until a signal comes. The input pipeline may go down with the signal (worker processes get a
    terminal's SIGINT too): its error then ends the loop as the signal does, whatever the pipeline is."""
    try:
      for item in batches:
        yield item
        if self:
          return
    except Exception:
      if not self:
        raise


class Selection:
  """Model selection on the val split: the best checkpoint (by `select_metric`) in W/best/, and early stopping.
  Rebuilt from metrics.jsonl on resume. Disabled (a no-op) without a val split."""

  def __init__(self, cfg, task, workdir, enabled):
    self.enabled, self.metric, self.patience = enabled, cfg.select_metric, cfg.early_stop_patience
    direction = tasks.select_direction(task, self.metric)  # the task's SELECT: "max" or "min"
    self.better = (lambda a, b: a > b) if direction == "max" else (lambda a, b: a < b)
    self.value, self.step, self.since = None, None, 0
    self.mngr = checkpoint.manager(workdir, 1, "best") if enabled else None
    for rec in wd.read_metrics(workdir) if enabled else []:
      if rec["split"] == "val":
        self._record(rec["step"], rec[self.metric])

  def _record(self, step, value):
    if self.value is None or self.better(value, self.value):
      self.value, self.step, self.since = value, step, 0
      return True
    self.since += 1
    return False

  def update(self, step, result, state):
    """Records an evaluation; saves `state` when it is the best so far. Returns whether it was."""
    if not self.enabled:
      return False
    is_best = self._record(step, result[self.metric])
    if is_best and step > (self.mngr.latest_step() or -1):  # after a resume, replayed steps are saved already
      checkpoint.save(self.mngr, step, state)  # (the loop checked `state` before evaluating it)
    return is_best

  def stop_early(self):
    return self.patience > 0 and self.since >= self.patience

  def restore(self, workdir, abstract):
    """The selected state (None when disabled)."""
    if not self.enabled:
      return None
    mngr = checkpoint.manager(workdir, 1, "best")
    with checkpoint.closing(mngr):
      state = checkpoint.restore_latest(mngr, abstract)
    print(f"best val {self.metric}: {self.value:.4f} at step {self.step}", flush=True)
    return state


class TrainLog:
  """The progress bar, metrics.jsonl (the source of truth) and TensorBoard. Per-step metrics stay on device
  until a flush writes their mean, so the loop never waits on them. A context manager around the loop: the
  bar closes however it ends (and the TensorBoard events reach the disk); `finish` records the final
  evaluation and closes the TensorBoard writer."""

  def __init__(self, cfg, task, workdir, lr_fn, total_steps, start_step, is_main, ds):
    self.cfg, self.task, self.workdir, self.lr_fn, self.is_main = cfg, task, workdir, lr_fn, is_main
    self.pending, self.checked = [], 0  # (step, metrics) on device; how many of them are known finite
    self.tracker = tracking.Tracker(workdir, cfg, start_step, enabled=is_main, preview=task.augment_preview(cfg, ds))
    # metrics.jsonl's records, read once and kept as they are appended: curves.png is drawn from these
    self.records, self.curves_at = wd.read_metrics(workdir) if is_main else [], None
    self.bar = tqdm.tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not is_main,
                         dynamic_ncols=True)
    self.t0 = time.perf_counter()

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *_):
    self.bar.close()
    self.tracker.flush()
    if exc_type is not None:
      self.tracker.close()

  def finish(self, result, summary):
    """The final evaluation: the task's line on stdout, TensorBoard scalars and the task's images."""
    print(tasks.line(self.task, result), flush=True)
    self.curves(force=True)
    self.tracker.end(result, self.task.summary_images(result, summary))
    self.tracker.close()

  def add(self, step, metrics):
    """Keeps step `step`'s metrics and reads the finite flags that are ready; returns the number of steps done."""
    self.pending.append((step, metrics))
    self.bar.update(1)
    while self.checked < len(self.pending):
      s, m = self.pending[self.checked]
      if not (m["finite"].is_ready() or len(self.pending) - self.checked > MAX_UNCHECKED):
        break  # not computed yet: read at a later step, never waited for (unless too many are in flight)
      if not bool(m["finite"]):
        self._diverged(s, m)
      self.checked += 1
    return step + 1

  def _diverged(self, s, m):
    m = jax.device_get(m)
    raise UserError(f"training diverged at step {s + 1}: loss {m['loss']}, gradient norm {m['grad_norm']}; stopped "
                    f"there, and no checkpoint was written after step {s}. Train with a lower optim.lr or with "
                    "optim.grad_clip, in a new --workdir (or with --restart)")

  def flush(self, step):
    if not self.pending:
      return
    fetched = jax.device_get(self.pending)
    for s, m in fetched:
      if not m["finite"]:
        self._diverged(s, m)
    rec = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1] if k != "finite"}
    elapsed = time.perf_counter() - self.t0
    rec.update(step=step, split="train", lr=float(self.lr_fn(step - 1)),
               img_per_sec=len(fetched) * self.cfg.batch_size / max(elapsed, 1e-9))
    self.t0 = time.perf_counter()
    self.pending, self.checked = [], 0
    if self.is_main:
      wd.append_metrics(self.workdir, rec)
      self.records.append(rec)
    self.tracker.train(rec)
    self.bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['img_per_sec']:.0f}")

  def evaluation(self, step, result, is_best):
    """Records an evaluation (metrics.jsonl, curves.png, a line under the bar)."""
    if self.is_main:
      wd.append_metrics(self.workdir, {"step": step, **result})
      self.records.append({"step": step, **result})
      self.curves()
    self.tracker.eval({"step": step, **result})
    self.write(f"step {step}: {tasks.line(self.task, result)}" + (" (best so far)" if is_best else ""))
    self.t0 = time.perf_counter()  # evaluation time is not training throughput

  def curves(self, force=False):
    """Redraws curves.png from the records, at most every CURVES_EVERY_S seconds unless `force`d: a long run
    evaluating often would otherwise spend more and more time drawing."""
    if not self.is_main or not (force or self.curves_at is None
                                or time.perf_counter() - self.curves_at >= CURVES_EVERY_S):
      return
    with wd.writing(os.path.join(self.workdir, "curves.png")):
      plots.plot_curves(self.records, os.path.join(self.workdir, "curves.png"), self.task.DEFAULT_SELECT)
    self.curves_at = time.perf_counter()

  def write(self, line):
    self.bar.write(line)
