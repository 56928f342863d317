"""Transfer learning: load parameters by name from another run, new head, freezing, LR multipliers.

Parameters are named by their path in the variables tree, "params/stage1_block1/conv1/kernel"
and "batch_stats/.../mean". `transfer.init_from` (a workdir, a workdir holding params.npz, or a
params .npz file) fills every parameter of the new model whose name and shape match; the rest
(the head for a different class count, anything matching `transfer.reinit`) keeps its fresh
initialisation. A table says what happened to each name.
"""
import math
import os
import re

import jax
import numpy as np

from imgrec.errors import UserError

PARAMS_FILE = "params.npz"
BF16_SUFFIX = "@bf16"  # .npz has no bfloat16: such arrays are stored as their uint16 bits under NAME@bf16


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


def save_params(path, variables, compressed=False):
  """Writes a variables tree ({"params": ..., "batch_stats": ...}) as a flat .npz by name
  (zip-deflated when `compressed`: what makes pruned zeros smaller on disk)."""
  flat = {}
  for k, v in flatten(jax.device_get(variables)).items():
    v = np.asarray(v)
    if v.dtype == jax.numpy.bfloat16:
      k, v = k + BF16_SUFFIX, v.view(np.uint16)
    flat[k] = v
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  (np.savez_compressed if compressed else np.savez)(path, **flat)


def load_source(path):
  """The named variables of `path`: a params .npz, a directory with params.npz, or a training workdir."""
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, PARAMS_FILE)):
    path = os.path.join(path, PARAMS_FILE)
  if os.path.isfile(path):
    try:
      with np.load(path) as f:
        return {k.removesuffix(BF16_SUFFIX): f[k].view(jax.numpy.bfloat16) if k.endswith(BF16_SUFFIX) else f[k]
                for k in f.files}
    except (OSError, ValueError) as e:
      raise UserError(f"transfer.init_from={path!r} is not a readable params .npz: {e}") from None
  if os.path.isdir(path):
    from imgrec import train
    _, _, _, state = train.restore(path)
    return {k: np.asarray(v) for k, v in flatten(jax.device_get(train.variables(state))).items()}
  raise UserError(f"transfer.init_from={path!r} does not exist; give a workdir or a params .npz file")


def merge(target, source, reinit=""):
  """Fills the flat `target` from the flat `source` by name.

  Returns (merged, rows) where rows are (name, status, target shape, source shape) with
  status one of: loaded, re-initialised (matched `reinit`), missing (not in the source),
  resized (a ViT position embedding whose square patch grid is interpolated to the new image size),
  shape mismatch (kept fresh), unused (in the source only).
  """
  pattern = re.compile(reinit) if reinit else None
  merged, rows = {}, []
  for name, value in target.items():
    src = source.get(name)
    shape, src_shape = tuple(np.shape(value)), None if src is None else tuple(np.shape(src))
    if pattern is not None and pattern.search(name):
      status = "re-initialised"
    elif src is None:
      status = "missing"
    elif src_shape != shape:
      src = _resized_pos_embedding(name, src, shape)
      status = "shape mismatch" if src is None else "resized"
    else:
      status = "loaded"
    merged[name] = np.asarray(src, dtype=np.asarray(value).dtype) if status in ("loaded", "resized") else value
    rows.append((name, status, shape, src_shape))
  rows += [(name, "unused", None, tuple(np.shape(v))) for name, v in source.items() if name not in target]
  return merged, rows


def _resized_pos_embedding(name, src, shape):
  """A (1, extra + n*n, D) position embedding interpolated to `shape`'s m*m grid, or None if `name`/shapes
  are not that (big_vision and timm do the same when fine-tuning at another resolution)."""
  from imgrec.models import vit
  if not name.endswith("pos_embedding") or len(shape) != 3 or np.ndim(src) != 3 or np.shape(src)[2] != shape[2]:
    return None
  for extra in (1, 0):  # a class token, or none (pool="gap")
    old, new = np.shape(src)[1] - extra, shape[1] - extra
    if old > 0 and new > 0 and math.isqrt(old) ** 2 == old and math.isqrt(new) ** 2 == new:
      return np.asarray(vit.resize_grid(np.asarray(src, np.float32), extra, math.isqrt(new), math.isqrt(new)))
  return None


def format_table(rows):
  """One line per status with counts, then every name that was not loaded."""
  lines = ["transfer: status           tensors     values"]
  for status in ("loaded", "resized", "re-initialised", "missing", "shape mismatch", "unused"):
    sel = [r for r in rows if r[1] == status]
    n = sum(int(np.prod(r[2] if r[2] is not None else r[3])) for r in sel)
    lines.append(f"transfer: {status:<16} {len(sel):>8} {n:>10}")
  for name, status, shape, src_shape in rows:
    if status != "loaded":
      detail = {"shape mismatch": f"{src_shape} -> {shape}", "resized": f"{src_shape} -> {shape}",
                "unused": f"{src_shape}"}.get(status, f"{shape}")
      lines.append(f"transfer:   {status:<16} {name} {detail}")
  return "\n".join(lines)


def init_from(state, tcfg, shardings=None):
  """`state` with params and batch_stats filled from `tcfg.init_from` by name; prints the table."""
  from imgrec import train
  source = load_source(tcfg.init_from)
  target = flatten(jax.device_get(train.variables(state)))
  merged, rows = merge(target, source, tcfg.reinit)
  print(format_table(rows), flush=True)
  if not any(r[1] == "loaded" for r in rows):
    raise UserError(f"transfer.init_from={tcfg.init_from!r}: no parameter matched by name and shape; "
                    "is it the same model family?")
  tree = unflatten(merged)
  new = state.replace(params=tree["params"], batch_stats=tree.get("batch_stats", state.batch_stats))
  if shardings is not None:
    new = jax.device_put(new, shardings)
  return new


def labels(tcfg, params):
  """Per-parameter optimiser group: "mult{i}" (first matching lr_mults regex) or "default".

  Freezing is optim.freeze (imgrec/optim.py)."""
  mults = [(re.compile(rx), float(m)) for rx, m in tcfg.lr_mults]

  def label(path, _):
    name = "params/" + "/".join(str(getattr(k, "key", k)) for k in path)
    for i, (rx, _) in enumerate(mults):
      if rx.search(name):
        return f"mult{i}"
    return "default"
  return jax.tree_util.tree_map_with_path(label, params)


def wrap_optimizer(tcfg, tx):
  """`tx` followed by scaled updates for the lr_mults groups."""
  import optax
  if not tcfg.lr_mults:
    return tx
  for item in tcfg.lr_mults:
    if len(item) != 2:
      raise UserError(f"transfer.lr_mults entries are (regex, multiplier) pairs, got {item!r}")
  groups = {"default": optax.identity()}
  groups.update({f"mult{i}": optax.scale(float(m)) for i, (_, m) in enumerate(tcfg.lr_mults)})
  return optax.chain(tx, optax.multi_transform(groups, lambda p: labels(tcfg, p)))


def features(model, variables, images, mean, std, layer="head", batch_size=256):
  """The inputs of layer `layer` (default: the classifier head) for uint8 `images`: frozen features."""
  import flax.linen as nn
  import jax.numpy as jnp
  from imgrec import train

  @jax.jit
  def run(images):
    found = {}

    def grab(next_fun, args, kwargs, ctx):
      if ctx.method_name == "__call__" and ctx.module.name == layer:
        found["x"] = args[0]
      return next_fun(*args, **kwargs)
    with nn.intercept_methods(grab):
      model.apply(variables, train.normalize(images, mean, std), train=False)
    return found["x"].reshape(images.shape[0], -1).astype(jnp.float32)

  return np.concatenate([np.asarray(run(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def linear_probe(workdir, data_cfg=None, train_per_class=0, C=1.0):
  """Logistic regression on the frozen head-input features of `workdir`'s model.

  `data_cfg` (a config `data` section; default: the workdir's) may select other classes, and
  `train_per_class` > 0 gives the k-shot probe. Returns {"accuracy", "train_examples", "classes"}.
  """
  from sklearn.linear_model import LogisticRegression
  from imgrec import train
  from imgrec.data import sources
  cfg, info, model, state = train.restore(workdir)
  data_cfg = data_cfg or cfg.data
  if train_per_class:
    data_cfg = data_cfg.copy_and_resolve_references()
    data_cfg.train_per_class = train_per_class
  ds = sources.load(data_cfg)
  variables = train.variables(state)
  splits = {}
  for name in (data_cfg.train_split, data_cfg.eval_split):
    split = ds.split(name)
    images, labels = split.get(np.arange(len(split)))
    splits[name] = (features(model, variables, images, info["mean"], info["std"]), labels)
  (xtr, ytr), (xte, yte) = splits[data_cfg.train_split], splits[data_cfg.eval_split]
  mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
  clf = LogisticRegression(C=C, max_iter=2000).fit((xtr - mu) / sd, ytr)
  return {"accuracy": float(clf.score((xte - mu) / sd, yte)), "train_examples": len(ytr),
          "classes": len(ds.class_names)}
