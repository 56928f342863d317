"""Model size and cost: parameter counts (from shapes only) and forward FLOPs from XLA's cost
analysis of the compiled forward pass (batch 1, eval mode; a multiply-add counts as 2 FLOPs).

Parameter counts trace the model abstractly (`jax.eval_shape`, nothing compiled or allocated), one
process per core for the whole zoo. FLOPs need a compile each, so they are asked for by name. Both are
kept in the user cache ($XDG_CACHE_HOME/imgrec/models.json, else ~/.cache/imgrec/), keyed by model,
classes, the jax/flax versions, the backend and the source of imgrec/models.
"""
import concurrent.futures
import contextlib
import glob
import hashlib
import json
import multiprocessing
import os
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from imgrec import compile_cache, models
from imgrec.models import layers


def count_params(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


@contextlib.contextmanager
def _plain_convolutions():
  """Traces convolutions as one lax op: the same parameters, a third less tracing than the CPU path."""
  saved, layers.IMPL = layers.IMPL, "lax"
  try:
    yield
  finally:
    layers.IMPL = saved


def abstract_variables(model, input_shape):
  """The model's variables as shapes (`jax.eval_shape`: no memory spent, nothing computed)."""
  key = jax.random.PRNGKey(0)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  with _plain_convolutions():
    return jax.eval_shape(lambda x: model.init({"params": key, "dropout": key}, x, train=False), x)


def forward_flops(model, variables, input_shape, batch=1):
  """FLOPs of one compiled eval-mode forward pass, as XLA's cost analysis counts them."""
  x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per device program
    cost = cost[0]
  return float(cost["flops"])


def describe(name, num_classes=1000, input_shape=None, flops=True):
  """{"name", "family", "input_shape", "params", "gflops" (None when not asked), "seconds"}.

  FLOPs are computed here (a compile), uncached; `describe_all` caches them. A two-tower model is described at
  its published embedding size, whatever `num_classes` says (its classes are text)."""
  start = time.perf_counter()
  num_classes = models.embed_dim(name) or num_classes
  input_shape = tuple(input_shape or models.input_shape(name))
  model = models.create(name, num_classes)
  variables = abstract_variables(model, input_shape)
  gflops = forward_flops(model, variables, input_shape) / 1e9 if flops else None
  return {"name": name, "family": models.family(name), "input_shape": input_shape,
          "params": count_params(variables["params"]), "gflops": gflops,
          "seconds": time.perf_counter() - start}


def cache_path():
  return os.path.join(os.path.dirname(compile_cache.default_dir()), "models.json")


def _source_hash():
  """Changes with the jax/flax versions and any model's code, so that no cached figure outlives its model."""
  h = hashlib.sha256(f"{jax.__version__} {flax.__version__} {jax.default_backend()}".encode())
  for path in sorted(glob.glob(os.path.join(os.path.dirname(models.__file__), "*.py"))):
    with open(path, "rb") as f:
      h.update(f.read())
  return h.hexdigest()[:16]


def _read_cache(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):  # none yet, or damaged: measure again
    return {}


def _workers(n):
  return max(1, min(n, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _abstract_rows(names, num_classes, progress):
  """describe(flops=False) of each name: in a process per core when there are many."""
  n_procs = _workers(len(names)) if len(names) > 2 else 1  # a worker's start-up (~1 s) only pays for many
  if n_procs == 1:
    for name in names:
      yield describe(name, num_classes, flops=False)
      progress(1)
    return
  # spawn: jax is multithreaded, a forked copy of it may deadlock.
  with concurrent.futures.ProcessPoolExecutor(n_procs, mp_context=multiprocessing.get_context("spawn")) as pool:
    for future in concurrent.futures.as_completed([pool.submit(describe, n, num_classes, None, False) for n in names]):
      yield future.result()
      progress(1)


def describe_all(names, num_classes=1000, flops=(), progress=lambda n: None):
  """Rows like `describe`'s for `names`, in order, GFLOPs only for the names in `flops`.

  Every figure is kept in the user cache (`cache_path()`): the listing is traced once per version of
  the models' code, each FLOPs figure compiled once. `progress(n)` is called as rows come."""
  path, version = cache_path(), _source_hash()
  cache = _read_cache(path)
  key = lambda what, name: f"{what}|{name}|{num_classes}|{version}"
  rows = {n: dict(cache[key("row", n)], gflops=None) for n in names if key("row", n) in cache}
  progress(len(rows))
  missing = [n for n in names if n not in rows] + [n for n in flops if key("gflops", n) not in cache]
  for r in _abstract_rows([n for n in names if n not in rows], num_classes, progress):
    cache[key("row", r["name"])] = {"name": r["name"], "family": r["family"], "input_shape": list(r["input_shape"]),
                                    "params": r["params"]}
    rows[r["name"]] = dict(cache[key("row", r["name"])], gflops=None)
  for name in flops:
    if key("gflops", name) not in cache:
      model, shape = models.create(name, models.embed_dim(name) or num_classes), tuple(rows[name]["input_shape"])
      cache[key("gflops", name)] = forward_flops(model, abstract_variables(model, shape), shape) / 1e9
    rows[name]["gflops"] = cache[key("gflops", name)]
  if missing:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + f".{os.getpid()}.tmp", "w") as f:
      json.dump(cache, f, indent=1, sort_keys=True)
    os.replace(path + f".{os.getpid()}.tmp", path)  # whole or not at all, whoever writes last
  return [rows[name] for name in names]


def table(rows):
  """A plain-text table of `describe` results."""
  lines = [f"{'model':<20} {'family':<13} {'input':<12} {'params (M)':>11} {'GFLOPs':>9}"]
  for r in rows:
    shape = "x".join(map(str, r["input_shape"]))
    gflops = "-" if r["gflops"] is None else f"{r['gflops']:.4f}"
    lines.append(f"{r['name']:<20} {r['family']:<13} {shape:<12} {r['params'] / 1e6:>11.3f} {gflops:>9}")
  return "\n".join(lines)
