"""Evaluation of a trained workdir: metrics over a whole split and a report with plots, by the run's task.

  evaluate_workdir(W)  ->  W/report/{metrics.json, report.md, PNG plots}   (classification: confusion.png,
                                     reliability.png, per_class.png, mistakes.png)

Batches stream through the task's jitted eval fn with the batch sharded over every device (as in
training); the outputs come back replicated, so every process holds the whole split's
outputs and the metrics (the task's `evaluate`) are exact over the split.
"""
import os

import jax

from imgrec import config as config_lib, parallel, steps, tasks, workdir as wd


def evaluate_workdir(workdir, split=None, batch_size=None, tta=False, report=True, overrides=()):
  """Metrics of the workdir's latest checkpoint on a split (default: the config's eval split).

  Returns the task's summary dict with split and step (classification: accuracy, top5_accuracy, loss, ece,
  examples, tta, ...); with `report`, also writes workdir/report/. `tta` sets classification.tta (a
  classification run's flip averaging; refused for other tasks).
  """
  run = wd.restore(workdir, params_only=True, overrides=overrides)
  cfg, info = run.cfg, run.info
  task = tasks.get(cfg.task)
  if tta:
    cfg.classification.tta = True
    config_lib.refuse_other_tasks_keys(cfg, task)
  split = split or cfg.data.eval_split
  mesh = parallel.make_mesh()
  batch_size = batch_size or cfg.batch_size
  parallel.check_batch(batch_size)
  ds = wd.dataset(run)
  data = ds.split(split)
  info = {**info, "class_names": list(ds.class_names)}  # the run's, or another set's under a task's OPEN_CLASSES
  outputs = steps.stream(task.make_eval_fn(run.model, info, cfg), run.variables, data, batch_size, mesh,
                         cfg.data.prefetch, desc=f"eval {split}")
  _, summary = task.evaluate(outputs, data, info, cfg)
  result = {"split": split, "step": int(run.state.step), **summary}
  if report and jax.process_index() == 0:
    out = os.path.join(workdir, "report")
    task.write_report(out, outputs, data, info, result)
    result["report"] = out
  # After the report, so that its metrics.json stays the task's summary: what the CLI prints.
  line = f"{tasks.line(task, result)} (checkpoint step {result['step']})"
  result["headline"], result["line"] = task.headline(result), line
  return result


def headline(result):
  """The short JSON summary the CLI prints (`imgrec eval --json`): the task's, made by `evaluate_workdir`."""
  return result["headline"]
