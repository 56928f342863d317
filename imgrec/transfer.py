"""Transfer learning: load parameters by name from another run, a params .npz or a pretrained checkpoint, and
the linear probe.

Parameters are named by their path in the variables tree, "params/stage1_block1/conv1/kernel"
and "batch_stats/.../mean". `transfer.init_from` (a workdir, a folder holding params.npz such as `imgrec
import` writes, a params .npz file, or directly a checkpoint `imgrec import` reads: big_vision .npz[:img],
timm / Hugging Face safetensors or folder, torchvision .pth) fills every parameter of the new model whose name
and shape match; a ViT position embedding is resampled to the new patch grid; the rest (anything matching
`transfer.reinit`, by default the head; a parameter of another shape) keeps its fresh initialisation. A table
says what happened to each name (loaded, resized, re-initialised, missing, wrong shape, unexpected); it is
printed and saved as W/transfer.json. Freezing (`optim.freeze`) and layer-wise learning rates
(`transfer.lr_mults`) are parts of the optimiser: imgrec/optim.py.
"""
import json
import math
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imgrec import checkpoint_import, parallel, steps, workdir as wd
from imgrec.data import sources
from imgrec.errors import UserError
from imgrec.models import vit
from imgrec.state import variables


def load_source(path):
  """The named variables of `path`: a pretrained checkpoint (`checkpoint_import`), a params .npz, a directory
  with params.npz, or a training workdir."""
  if checkpoint_import.is_checkpoint(path):
    values, info, _ = checkpoint_import.convert(path)
    print(f"transfer: {path} is a {info['layout']} checkpoint of imgrec {info['model']['name']} "
          f"{info['model']['kwargs'] or ''}", flush=True)
    return values
  if os.path.isfile(path) or os.path.isfile(os.path.join(path, wd.PARAMS_FILE)):
    return wd.load_params(path)
  if os.path.isdir(path):
    run = wd.restore(path, params_only=True)
    return {k: np.asarray(v) for k, v in wd.flatten(jax.device_get(run.variables)).items()}
  raise UserError(f"transfer.init_from={path!r} does not exist; give a workdir or a params .npz file")


def source_name(name, prefix):
  """The source's name for the target parameter `name` ("params/backbone/stage1_block1/conv1/kernel"), when the
  source's model sits under `prefix` ("backbone/") in the target's; None for a parameter outside it."""
  if not prefix:
    return name
  collection, _, rest = name.partition("/")
  return f"{collection}/{rest[len(prefix):]}" if rest.startswith(prefix) else None


def merge(target, source, reinit="", prefix=""):
  """Fills the flat `target` from the flat `source` by name. With `prefix` the source is a part of the target
  model (a classifier's weights for a detector's backbone, under "backbone/"): source names gain it.

  Returns (merged, rows) where rows are (name, status, target shape, source shape) with
  status one of: loaded, re-initialised (matched `reinit`), missing (not in the source),
  resized (a ViT position embedding whose square patch grid is interpolated to the new image size),
  wrong shape (kept fresh), unexpected (in the source only).
  """
  pattern = re.compile(reinit) if reinit else None
  merged, rows = {}, []
  used = set()
  for name, value in target.items():
    src = source.get(source_name(name, prefix))
    if src is not None:
      used.add(source_name(name, prefix))
    shape, src_shape = tuple(np.shape(value)), None if src is None else tuple(np.shape(src))
    if pattern is not None and pattern.search(name):
      status = "re-initialised"
    elif src is None:
      status = "missing"
    elif src_shape != shape:
      src = _resized_pos_embedding(name, src, shape)
      status = "wrong shape" if src is None else "resized"
    else:
      status = "loaded"
    merged[name] = np.asarray(src, dtype=np.asarray(value).dtype) if status in ("loaded", "resized") else value
    rows.append((name, status, shape, src_shape))
  rows += [(name, "unexpected", None, tuple(np.shape(v))) for name, v in source.items() if name not in used]
  return merged, rows


def _resized_pos_embedding(name, src, shape):
  """A (1, extra + n*n, D) position embedding interpolated to `shape`'s m*m grid, or None if `name`/shapes
  are not that (big_vision and timm do the same when fine-tuning at another resolution)."""
  if not name.endswith("pos_embedding") or len(shape) != 3 or np.ndim(src) != 3 or np.shape(src)[2] != shape[2]:
    return None
  for extra in (1, 0):  # a class token, or none (pool="gap")
    old, new = np.shape(src)[1] - extra, shape[1] - extra
    if old > 0 and new > 0 and math.isqrt(old) ** 2 == old and math.isqrt(new) ** 2 == new:
      return np.asarray(vit.resize_grid(np.asarray(src, np.float32), extra, math.isqrt(new), math.isqrt(new)))
  return None


STATUSES = ("loaded", "resized", "re-initialised", "missing", "wrong shape", "unexpected")


def format_table(rows):
  """One line per status with counts, then every name that was not loaded."""
  lines = ["transfer: status           tensors     values"]
  for status in STATUSES:
    sel = [r for r in rows if r[1] == status]
    n = sum(int(np.prod(r[2] if r[2] is not None else r[3])) for r in sel)
    lines.append(f"transfer: {status:<16} {len(sel):>8} {n:>10}")
  for name, status, shape, src_shape in rows:
    if status != "loaded":
      detail = {"wrong shape": f"{src_shape} -> {shape}", "resized": f"{src_shape} -> {shape}",
                "unexpected": f"{src_shape}"}.get(status, f"{shape}")
      lines.append(f"transfer:   {status:<16} {name} {detail}")
  return "\n".join(lines)


def save_report(path, init_from, rows):
  """W/transfer.json: the counts per status and every parameter's row."""
  counts = {s: sum(r[1] == s for r in rows) for s in STATUSES}
  report = {"init_from": init_from, "counts": counts,
            "rows": [{"name": n, "status": s, "shape": None if a is None else list(a),
                      "source_shape": None if b is None else list(b)} for n, s, a, b in rows]}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with wd.writing(path), open(path, "w") as f:
    json.dump(report, f, indent=1)


def init_from(state, tcfg, shardings=None, workdir=None):
  """`state` with params and batch_stats filled from `tcfg.init_from` by name; prints the table (and saves it as
  `workdir`/transfer.json)."""
  source = load_source(tcfg.init_from)
  target = wd.flatten(jax.device_get(variables(state)))
  merged, rows = merge(target, source, tcfg.reinit, tcfg.prefix)
  print(format_table(rows), flush=True)
  if workdir and jax.process_index() == 0:
    save_report(os.path.join(workdir, "transfer.json"), tcfg.init_from, rows)
  if not any(r[1] == "loaded" for r in rows):
    raise UserError(f"transfer.init_from={tcfg.init_from!r}: no parameter matched by name and shape; "
                    "is it the same model family? (a classifier's weights for a detector's backbone: "
                    "--config.transfer.prefix=backbone/)")
  tree = wd.unflatten(merged)
  new = state.replace(params=tree["params"], batch_stats=tree.get("batch_stats", state.batch_stats))
  if shardings is not None:
    new = jax.device_put(new, shardings)
  return new


def features_fn(model, mean, std, layer="head"):
  """`fn(variables, batch) -> {"x", "label"}`: the (flattened) inputs of layer `layer` (default: the classifier
  head) for a batch's uint8 images, i.e. frozen features, for `steps.stream`."""
  def fn(variables, batch):
    found = {}

    def grab(next_fun, args, kwargs, ctx):
      if ctx.method_name == "__call__" and ctx.module.name == layer:
        found["x"] = args[0]
      return next_fun(*args, **kwargs)
    with nn.intercept_methods(grab):
      steps.apply(model, variables, batch["image"], mean, std)
    return {"x": found["x"].reshape(batch["image"].shape[0], -1).astype(jnp.float32), "label": batch["label"]}
  return fn


def linear_probe(workdir, data_cfg=None, train_per_class=0, C=1.0):
  """Logistic regression on the frozen head-input features of `workdir`'s model.

  `data_cfg` (a config `data` section; default: the workdir's) may select other classes, and
  `train_per_class` > 0 gives the k-shot probe. Returns {"accuracy", "train_examples", "classes"}.
  """
  from sklearn.linear_model import LogisticRegression
  run = wd.restore(workdir, params_only=True)
  data_cfg = data_cfg or run.cfg.data
  if train_per_class:
    data_cfg = data_cfg.copy_and_resolve_references()
    data_cfg.train_per_class = train_per_class
  ds = sources.load(data_cfg)
  mesh = parallel.make_mesh()
  fn = features_fn(run.model, run.info["mean"], run.info["std"])
  splits = {}
  for name in (data_cfg.train_split, data_cfg.eval_split):
    out = steps.stream(fn, run.variables, ds.split(name), run.cfg.batch_size, mesh, desc=f"features {name}")
    splits[name] = (out["x"], out["label"])
  (xtr, ytr), (xte, yte) = splits[data_cfg.train_split], splits[data_cfg.eval_split]
  mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
  clf = LogisticRegression(C=C, max_iter=2000).fit((xtr - mu) / sd, ytr)
  return {"accuracy": float(clf.score((xte - mu) / sd, yte)), "train_examples": len(ytr),
          "classes": len(ds.class_names)}
