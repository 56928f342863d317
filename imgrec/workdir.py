"""A run on disk, and the only way back to a trained model.

  W/config.json      the full config of the run          W/dataset.json   class names, image shape, mean/std
  W/checkpoints/N/   Orbax checkpoints of the TrainState  W/best/N/        the selected one (with a val split)
  W/metrics.jsonl    one JSON record per log interval and evaluation (the source of truth for curves)
  W/params.npz       variables by name (imported, pruned or compressed weights)
  W/train.lock       held by the `imgrec train` running in W, W/previous-T/ and W/damaged-T/: imgrec/resume.py

`build(cfg, info, mesh)` makes the model (through the run's task, imgrec/tasks), optimiser and the state's abstract shapes from a config and a
dataset.json; `restore(W)` loads a run through it (`params_only=True` for inference: no optimiser state
is read or held); `write(W, cfg, info, state)` writes one (training, pruning and channel pruning alike).
"""
import dataclasses
import functools
import json
import logging
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from imgrec import checkpoint, checkpoint_import, config as config_lib, files, optim, parallel, tasks
from imgrec.data import pipeline
from imgrec.errors import UserError
from imgrec.state import TrainState, init_state, variables

log = logging.getLogger("imgrec")

CONFIG_FILE, INFO_FILE, METRICS_FILE, PARAMS_FILE = "config.json", "dataset.json", "metrics.jsonl", "params.npz"
BF16_SUFFIX = "@bf16"  # .npz has no bfloat16: such arrays are stored as their uint16 bits under NAME@bf16


# ---------------------------------------------------------------------------- model and state from a config

def schedule_lengths(cfg, num_train):
  """(steps per epoch, total steps) for a config and training-set size."""
  per_epoch = pipeline.steps_per_epoch(num_train, cfg.batch_size)
  total = cfg.steps if cfg.steps > 0 else max(1, int(round(cfg.epochs * per_epoch)))
  return per_epoch, total


@dataclasses.dataclass(frozen=True)
class Built:
  """What `build` makes of a config and its dataset.json."""
  model: Any        # the task's Linen module (`tasks.get(cfg.task).create_model`)
  tx: Any           # the optax optimiser
  lr: Any           # step -> learning rate
  init: Any         # () -> a fresh TrainState (jit it with out_shardings=shardings to initialise in place)
  abstract: Any     # the state's shapes, carrying their target shardings (what a checkpoint restores into)
  shardings: Any    # the state's shardings


def build(cfg, info, mesh, fsdp=None):
  """The model (through the run's task), optimiser, learning-rate schedule, `init()` and the state's abstract
  shapes with their target shardings: a `Built`.

  The one recipe shared by training and everything that restores a checkpoint. The state is sharded
  FSDP-style when `fsdp` (default: `cfg.parallel.fsdp`), else replicated.
  """
  model = tasks.get(cfg.task).create_model(cfg, info)
  per_epoch, total = schedule_lengths(cfg, info["num_train"])
  tx, lr = optim.make(cfg, total, per_epoch)
  init = functools.partial(init_state, model, tx, cfg.seed, tuple(info["image_shape"]), cfg.optim.ema_decay > 0)
  abstract = jax.eval_shape(init)
  fsdp = cfg.parallel.fsdp if fsdp is None else fsdp
  shardings = parallel.state_shardings(abstract, mesh, fsdp, cfg.parallel.fsdp_min_size)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return Built(model, tx, lr, init, abstract, shardings)


def initial_state(cfg, info, mesh, params=None, batch_stats=None):
  """The step-0 TrainState of `cfg`, placed in its shardings; with `params` (and `batch_stats`), starting from
  those weights instead of a fresh initialisation (its optimiser state and EMA then start from them)."""
  built = build(cfg, info, mesh)
  tx, shardings = built.tx, built.shardings
  state = jax.jit(built.init, out_shardings=shardings)()  # initialised already in place
  if params is None:
    return state
  params, batch_stats = jax.device_put((params, batch_stats or {}), (shardings.params, shardings.batch_stats))
  ema = cfg.optim.ema_decay > 0
  state = state.replace(params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                        ema_params=jax.tree.map(jnp.copy, params) if ema else {},
                        ema_batch_stats=jax.tree.map(jnp.copy, batch_stats) if ema else {})
  return jax.device_put(state, shardings)


def data_info(cfg, ds):
  """What dataset.json records of the data a run trained on (read back by every command on the run). A run
  fine-tuned from a pretrained checkpoint normalises as that checkpoint expects (its own config, or its layout's
  convention), unless data.norm / data.mean say otherwise; the checkpoint's resize and crop are recorded."""
  train_split = ds.split(cfg.data.train_split)
  pre = None
  if cfg.transfer.init_from and not (cfg.data.norm or cfg.data.mean):
    pre = checkpoint_import.checkpoint_preprocessing(cfg.transfer.init_from)
  if pre and len(pre["mean"]) == ds.image_shape[-1]:
    mean, std = [float(m) for m in pre["mean"]], [float(s) for s in pre["std"]]
  else:
    pre, (mean, std) = None, pipeline.normalization(cfg.data, train_split)
  info = {"source": ds.name, "class_names": list(ds.class_names), "image_shape": list(ds.image_shape),
          "mean": mean, "std": std, "num_train": len(train_split), "pp_eval": ds.pp_eval}
  if pre:
    info["checkpoint_preprocessing"] = pre
  return info


# ---------------------------------------------------------------------------- reading and writing a run

class Run(NamedTuple):
  """A restored run. With `params_only`, `state` holds no optimiser state (`opt_state` and `rng` are None)."""
  cfg: Any
  info: dict
  model: Any
  state: TrainState

  @property
  def variables(self):
    """What inference uses: {"params", "batch_stats"}, the EMA pair when the run keeps one."""
    return variables(self.state)


def read_info(workdir):
  path = os.path.join(workdir, INFO_FILE)
  if not os.path.isfile(path):
    raise UserError(f"{path} not found: is {workdir} a workdir written by `imgrec train`?")
  return files.read_json(path)


writing = files.writing  # a failed write of a path (disk full, read-only) as a UserError naming it

# What a run consists of: the only names `imgrec train --restart` moves aside (with the run's extra outputs:
# reports, TensorBoard events, profiles, compressed variables), so a directory's other files are never touched.
RUN_FILES = (CONFIG_FILE, INFO_FILE, METRICS_FILE, PARAMS_FILE, "checkpoints", "best", "curves.png", "tensorboard",
             "profile", "report", "explain", "robustness", "import.json", "train.log")  # train.log: a sweep trial's


holds_run, refuse_existing_run = files.holds_run, files.refuse_existing_run  # one check, in files.py


def write(workdir, cfg, info, state=None, keep=None):
  """Writes config.json and dataset.json (each atomically: a kill leaves the old file or the new one), and
  `state` as the checkpoint of its step when given."""
  with writing(workdir):
    os.makedirs(workdir, exist_ok=True)
  config_lib.save(cfg, os.path.join(workdir, CONFIG_FILE))
  files.write_json(os.path.join(workdir, INFO_FILE), info)
  if state is not None:
    mngr = checkpoint.manager(workdir, keep or cfg.keep_checkpoints)
    with checkpoint.closing(mngr):
      checkpoint.save(mngr, int(state.step), state)


# Keys a command on a trained run may override: where its data is read from (data that moved, or another
# source of the run's task and classes), and what to do with an unreadable image there.
DATA_KEYS = ("data.dir", "data.source", "data.on_bad_image")


def apply_data_overrides(cfg, overrides):
  """Applies "data.dir=NEW" / "data.source=NEW" / "data.on_bad_image=skip" (from `--config.data.dir=NEW`) and the
  task's keys that only change how it is evaluated (its MAY_CHANGE: zero-shot prompt templates) to a trained run's
  config; any other key is refused: the run's config.json says what was trained, and only where its data lives
  and how it is evaluated may change."""
  allowed = DATA_KEYS + tuple(tasks.get(cfg.task).MAY_CHANGE)
  for item in overrides:
    key = item.partition("=")[0]
    if key not in allowed:
      raise UserError(f"--config.{key} is refused: a command on a trained run uses its config.json as it is, and "
                      f"only {', '.join('--config.' + k for k in allowed)} may change, to point it at data "
                      "that moved or other data of its classes, or to evaluate it another way; to change anything "
                      "else, train a new run")
  return config_lib.override(cfg, overrides)


def restore(workdir, mesh=None, params_only=False, overrides=()):
  """Loads a trained workdir on this process's devices: a `Run`.

  The checkpoint may have been written on any number of devices; it is restored replicated on `mesh`
  (default: all devices here). The selected model (W/best) when the run kept one, else the latest.
  `overrides` ("data.dir=NEW", "data.source=NEW") point the run at data that moved (`apply_data_overrides`).
  An `imgrec import` folder restores as a run too (`restore_import`).
  """
  if is_import(workdir):
    return restore_import(workdir, mesh, overrides)
  cfg = config_lib.load_saved(os.path.join(workdir, CONFIG_FILE))
  apply_data_overrides(cfg, overrides)
  info = read_info(workdir)
  mesh = mesh or parallel.make_mesh()
  built = build(cfg, info, mesh, fsdp=False)  # replicated, whatever wrote it
  model, abstract = built.model, built.abstract
  if params_only:  # the optimiser state is neither read nor held
    abstract = {"step": abstract.step, "params": abstract.params, "batch_stats": abstract.batch_stats,
                "ema_params": abstract.ema_params, "ema_batch_stats": abstract.ema_batch_stats}
  found = None
  for sub in ("best", "checkpoints"):
    if os.path.isdir(os.path.join(workdir, sub)):
      mngr = checkpoint.manager(workdir, cfg.keep_checkpoints, sub)
      with checkpoint.closing(mngr):
        found = checkpoint.restore_latest(mngr, abstract, partial=params_only)
      if found is not None:
        break
  if found is None:
    raise UserError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}; train first with "
                    f"`imgrec train --workdir {workdir}`")
  if params_only:
    found = TrainState(step=found["step"], params=found["params"], batch_stats=found["batch_stats"], opt_state=None,
                       rng=None, ema_params=found["ema_params"], ema_batch_stats=found["ema_batch_stats"])
  return Run(cfg, info, model, found)


def is_import(path):
  """Whether `path` is a folder `imgrec import` wrote (import.json + params.npz, no config.json)."""
  return all(os.path.isfile(os.path.join(path, n)) for n in (checkpoint_import.INFO_FILE, PARAMS_FILE)) and \
      not os.path.exists(os.path.join(path, CONFIG_FILE))


def restore_import(folder, mesh=None, overrides=()):
  """An `imgrec import` folder as a params-only `Run` (step 0), so serve, eval, export and explain take it."""
  cfg, info = checkpoint_import.run_files(folder)
  apply_data_overrides(cfg, overrides)
  mesh = mesh or parallel.make_mesh()
  built = build(cfg, info, mesh, fsdp=False)
  loaded = unflatten(load_params(folder))
  shapes = {"params": built.abstract.params, "batch_stats": built.abstract.batch_stats}
  got = {k: loaded.get(k, {}) for k in shapes}
  want, have = flatten(jax.tree.map(lambda a: a.shape, shapes)), flatten(jax.tree.map(np.shape, got))
  wrong = sorted(k for k in want if tuple(have.get(k, ())) != tuple(want[k]))
  if wrong:
    raise UserError(f"{folder}/{PARAMS_FILE} does not fit {cfg.model.name} (import.json): {len(wrong)} parameters "
                    f"missing or of another shape, e.g. {wrong[0]}; import the checkpoint again")
  target = {"params": built.shardings.params, "batch_stats": built.shardings.batch_stats}
  got = jax.device_put(jax.tree.map(lambda a, s: np.asarray(a, s.dtype), got, shapes), target)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=got["params"], batch_stats=got["batch_stats"],
                     opt_state=None, rng=None, ema_params={}, ema_batch_stats={})
  return Run(cfg, info, built.model, state)


def dataset(run):
  """The data set of a restored run (its task's `open_data` of its config's data, the splits as the source gives
  them: no val split carved out), checked against its dataset.json: the model needs the classes (unless its task
  has OPEN_CLASSES) and the image shape it was trained on."""
  if run.info.get("imported") and not run.cfg.data.source:
    raise UserError("an `imgrec import` folder names no data: point it at yours with "
                    "--config.data.source=folder:DIR (or tfds:NAME) whose classes are the checkpoint's, "
                    f"{run.info['class_names'][:3]}...")
  cfg = run.cfg.copy_and_resolve_references()
  cfg.data.val_fraction = 0.0
  if run.info.get("pp_eval"):  # the run's own eval preprocessing on any source (not that source's defaults)
    cfg.data.pp_eval = cfg.data.pp_train = run.info["pp_eval"]
  task = tasks.get(cfg.task)
  ds = task.open_data(cfg)
  saved = {"class_names": run.info["class_names"], "image_shape": run.info["image_shape"]}
  if getattr(task, "OPEN_CLASSES", False):  # a model of any labels (zero-shot from their names): the shape only
    del saved["class_names"]
  found = {"class_names": list(ds.class_names), "image_shape": list(ds.image_shape)}
  diff = [f"{k} {saved[k]} -> {found[k]}" for k in saved if saved[k] != found[k]]
  if diff:
    raise UserError(f"the data of {run.cfg.data.source!r}{' in ' + run.cfg.data.dir if run.cfg.data.dir else ''} is "
                    f"not what the run trained on: {'; '.join(diff)}; point --config.data.dir/--config.data.source "
                    "at the run's data")
  return ds


# ---------------------------------------------------------------------------- metrics.jsonl

def append_metrics(workdir, record):
  path = os.path.join(workdir, METRICS_FILE)
  with writing(path), open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def read_metrics(workdir):
  """The records of metrics.jsonl. A last line cut short (the writer was killed mid-append) is left out; a bad
  line before it is a UserError naming the file and line."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().splitlines()
  records = []
  for i, line in enumerate(lines, 1):
    try:
      records.append(json.loads(line))
    except ValueError:
      if i < len(lines):
        raise UserError(f"{path} line {i} is not a JSON record: {line[:80]!r}; fix or remove that line") from None
      log.warning("%s: the last line is cut short (a write was interrupted); it is left out", path)
  return records


def trim_metrics(workdir, last_step):
  """On resume, drops the records written after the checkpoint the run resumes from (and nothing else). The
  file is replaced in one rename, so a crash here leaves the old one."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return
  records = read_metrics(workdir)
  kept = [r for r in records if r["step"] <= last_step]
  with open(path, "rb") as f:  # a last line cut short is dropped too, or the next record would join it
    f.seek(0, os.SEEK_END)
    f.seek(max(f.tell() - 1, 0))
    intact = f.read(1) in (b"\n", b"")
  if len(kept) == len(records) and intact:
    return
  files.write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


# ---------------------------------------------------------------------------- variables by name (.npz)

def flatten(tree, prefix=""):
  """Nested dicts -> {"a/b/c": leaf}."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(flatten(v, name + "/"))
    else:
      out[name] = v
  return out


def unflatten(flat):
  tree = {}
  for name, v in flat.items():
    node = tree
    *parents, last = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return tree


def save_params(path, variables_, compressed=False):
  """Writes a variables tree ({"params": ..., "batch_stats": ...}) as a flat .npz by name
  (zip-deflated when `compressed`: what makes pruned zeros smaller on disk)."""
  flat = {}
  for k, v in flatten(jax.device_get(variables_)).items():
    v = np.asarray(v)
    if v.dtype == jnp.bfloat16:
      k, v = k + BF16_SUFFIX, v.view(np.uint16)
    flat[k] = v
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  (np.savez_compressed if compressed else np.savez)(path, **flat)


def load_params(path):
  """The flat {name: array} of a params .npz (or of a directory holding params.npz)."""
  if os.path.isdir(path):
    path = os.path.join(path, PARAMS_FILE)
  try:
    with np.load(path) as f:
      return {k.removesuffix(BF16_SUFFIX): f[k].view(jnp.bfloat16) if k.endswith(BF16_SUFFIX) else f[k]
              for k in f.files}
  except (OSError, ValueError) as e:
    raise UserError(f"{path!r} is not a readable params .npz: {e}") from None
