"""The trainer: `train(cfg, workdir)` reads top to bottom, in banner sections.

Everything it uses lies below it: the run on disk (workdir.py), the pure steps and the one evaluation
loop (steps.py), the state (state.py), the optimiser (optim.py), the input pipeline (data/). Only the
CLI and scripts import this module.
"""
import os
import time

import jax
import numpy as np
import tqdm

from imgrec import checkpoint, compile_cache, config as config_lib, evaluate as evaluate_lib, losses, metrics
from imgrec import parallel, plots, steps, tracking, transfer, workdir as wd
from imgrec.data import pipeline, sources
from imgrec.errors import UserError
from imgrec.state import variables


def train(cfg, workdir):
  """Trains `cfg` in `workdir`, resuming from its latest checkpoint. Returns (state, final eval metrics)."""
  config_lib.validate(cfg)
  compile_cache.enable(cfg.compile_cache)  # a second run loads its executables instead of compiling them

  # ---------------------------------------------------------------- devices and mesh
  parallel.initialize(cfg.parallel)
  mesh = parallel.make_mesh()
  parallel.check_batch(cfg.batch_size)
  batch_sharding = parallel.batch_sharding(mesh)
  is_main = jax.process_index() == 0

  # ---------------------------------------------------------------- data
  ds, info, monitor = open_data(cfg)
  train_split = ds.split(cfg.data.train_split)
  per_epoch, total_steps = wd.schedule_lengths(cfg, len(train_split))
  if is_main:
    wd.write(workdir, cfg, info)

  # ---------------------------------------------------------------- model and state
  model, tx, lr_fn, init, abstract, shardings = wd.build(cfg, info, mesh)
  mngr = checkpoint.manager(workdir, cfg.keep_checkpoints)
  state = checkpoint.restore_latest(mngr, abstract) or initial_state(cfg, init, shardings)
  start_step = int(state.step)
  if is_main:
    wd.trim_metrics(workdir, start_step)
  print(banner(cfg, ds, state, monitor, total_steps, per_epoch), flush=True)

  # ---------------------------------------------------------------- compiled steps
  train_step = compile_train_step(cfg, model, tx, info, shardings, batch_sharding)
  logits_fn = evaluate_lib.logits_fn(model, info["mean"], info["std"])

  def evaluate(state, split):  # -> (the record metrics.jsonl keeps, the full `metrics.summary`)
    out = steps.stream(logits_fn, variables(state), ds.split(split), cfg.batch_size, mesh, cfg.data.prefetch,
                       desc=f"eval {split}")
    summary = metrics.summary(out["logits"], out["label"], info["class_names"])
    return {"split": split, **{k: summary[k] for k in EVAL_RECORD}}, summary

  # ---------------------------------------------------------------- model selection
  best = Selection(cfg, workdir, enabled=cfg.data.val_fraction > 0)  # a held-out val split, never the reported one

  # ---------------------------------------------------------------- loop
  log = TrainLog(cfg, workdir, lr_fn, total_steps, start_step, is_main)
  profiler = tracking.Profiler(cfg.profile, os.path.join(workdir, tracking.PROFILE_DIR))
  eval_every, ckpt_every = cfg.eval_every or per_epoch, cfg.checkpoint_every or per_epoch
  batches = pipeline.train_batches(train_split, cfg.batch_size, cfg.seed, start_step,
                                   start_step if best.stop_early() else total_steps, batch_sharding, cfg.data.prefetch)
  result = None
  with log, profiler:
    for step, batch in batches:
      state, step_metrics = profiler.step(train_step, step, state, batch)
      done = log.add(step, step_metrics)
      if done % cfg.log_every == 0 or done == total_steps:
        log.flush(done)
      if done % eval_every == 0 or done == total_steps:
        log.flush(done)
        result, summary = evaluate(state, monitor)
        log.evaluation(done, result, best.update(done, result, state))
      if done % ckpt_every == 0 or done == total_steps or best.stop_early():
        log.flush(done)
        checkpoint.save(mngr, done, state)
      if best.stop_early():
        log.write(f"early stop at step {done}: no better val {cfg.select_metric} for {best.since} evaluations")
        batches.close()
        break
  mngr.wait_until_finished()
  mngr.close()

  # ---------------------------------------------------------------- final evaluation
  state = best.restore(abstract) or state  # the selected model, when there is one
  if best.enabled or result is None:  # test once on the selected model; or resumed an already finished run
    result, summary = evaluate(state, cfg.data.eval_split)
  log.finish(result, summary)
  return state, result


# ---------------------------------------------------------------------------- the sections' helpers

EVAL_RECORD = ("accuracy", "loss", "examples", "top5_accuracy", "ece")  # what metrics.jsonl keeps of an evaluation


def open_data(cfg):
  """(data set, its dataset.json info, the split evaluated during training). Evaluations during training,
  and model selection, use a held-out val split when there is one: never test."""
  ds = sources.load(cfg.data)
  if cfg.data.val_fraction > 0:
    ds = sources.with_validation(ds, cfg.data.train_split, cfg.data.val_fraction)
  return ds, wd.data_info(cfg, ds), "val" if cfg.data.val_fraction > 0 else cfg.data.eval_split


def initial_state(cfg, init, shardings):
  """A fresh state, initialised in place; for fine-tuning, matching parameters come from another run."""
  state = jax.jit(init, out_shardings=shardings)()
  if cfg.transfer.init_from:
    state = transfer.init_from(state, cfg.transfer, shardings)
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


def compile_train_step(cfg, model, tx, info, shardings, batch_sharding):
  """`step(state, batch) -> (state, metrics)`, jitted with the state donated. With distillation the teacher's
  variables are an argument of the compiled step (restored once here), not constants inside it."""
  if not cfg.distill.teacher:
    step = steps.make_train_step(model, tx, info["mean"], info["std"], cfg)
    return jax.jit(step, in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None),
                   donate_argnums=(0,))
  teacher = wd.restore(cfg.distill.teacher, params_only=True)
  objective = losses.distillation(teacher.model, teacher.info, info, cfg.distill.alpha, cfg.distill.temperature)
  step = jax.jit(steps.make_train_step(model, tx, info["mean"], info["std"], cfg, objective),
                 in_shardings=(shardings, batch_sharding, None), out_shardings=(shardings, None), donate_argnums=(0,))
  teacher_variables = teacher.variables
  return lambda state, batch: step(state, batch, teacher_variables)


class Selection:
  """Model selection on the val split: the best checkpoint (by `select_metric`) in W/best/, and early stopping.
  Rebuilt from metrics.jsonl on resume. Disabled (a no-op) without a val split."""

  def __init__(self, cfg, workdir, enabled):
    self.enabled, self.metric, self.patience = enabled, cfg.select_metric, cfg.early_stop_patience
    self.better = (lambda a, b: a > b) if self.metric == "accuracy" else (lambda a, b: a < b)
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
    if is_best:
      checkpoint.save(self.mngr, step, state)
    return is_best

  def stop_early(self):
    return self.patience > 0 and self.since >= self.patience

  def restore(self, abstract):
    """The selected state (None when disabled); closes the manager."""
    if not self.enabled:
      return None
    self.mngr.wait_until_finished()
    state = checkpoint.restore_latest(self.mngr, abstract)
    self.mngr.close()
    print(f"best val {self.metric}: {self.value:.4f} at step {self.step}", flush=True)
    return state


class TrainLog:
  """The progress bar, metrics.jsonl (the source of truth) and TensorBoard. Per-step metrics stay on device
  until a flush writes their mean, so the loop never waits on them. A context manager around the loop: the
  bar closes however it ends; `finish` records the final evaluation and closes the TensorBoard writer."""

  def __init__(self, cfg, workdir, lr_fn, total_steps, start_step, is_main):
    self.cfg, self.workdir, self.lr_fn, self.is_main = cfg, workdir, lr_fn, is_main
    self.pending = []
    self.tracker = tracking.Tracker(workdir, cfg, start_step, enabled=is_main)
    self.bar = tqdm.tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not is_main,
                         dynamic_ncols=True)
    self.t0 = time.perf_counter()

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *_):
    self.bar.close()
    if exc_type is not None:
      self.tracker.close()

  def finish(self, result, summary):
    """The final evaluation: a line on stdout, TensorBoard scalars and the confusion / reliability images."""
    print(f"{result['split']} accuracy: {result['accuracy']:.4f} (loss {result['loss']:.4f}, "
          f"{result['examples']} examples)", flush=True)
    self.tracker.end(result, summary)
    self.tracker.close()

  def add(self, step, metrics):
    """Keeps step `step`'s metrics; returns the number of steps done."""
    self.pending.append((step, metrics))
    self.bar.update(1)
    return step + 1

  def flush(self, step):
    if not self.pending:
      return
    fetched = jax.device_get(self.pending)
    for s, m in fetched:
      if not np.isfinite(m["loss"]):
        raise UserError(f"training diverged: loss is {m['loss']} at step {s}; lower optim.lr or set optim.grad_clip")
    rec = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}
    elapsed = time.perf_counter() - self.t0
    rec.update(step=step, split="train", lr=float(self.lr_fn(step - 1)),
               img_per_sec=len(fetched) * self.cfg.batch_size / max(elapsed, 1e-9))
    self.t0 = time.perf_counter()
    self.pending.clear()
    if self.is_main:
      wd.append_metrics(self.workdir, rec)
    self.tracker.train(rec)
    self.bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['img_per_sec']:.0f}")

  def evaluation(self, step, result, is_best):
    """Records an evaluation (metrics.jsonl, curves.png, a line under the bar)."""
    if self.is_main:
      wd.append_metrics(self.workdir, {"step": step, **result})
      plots.plot_curves(wd.read_metrics(self.workdir), os.path.join(self.workdir, "curves.png"))
    self.tracker.eval({"step": step, **result})
    self.write(f"step {step}: {result['split']} accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}"
               + (" (best so far)" if is_best else ""))
    self.t0 = time.perf_counter()  # evaluation time is not training throughput

  def write(self, line):
    self.bar.write(line)
