"""Model size and cost: parameter counts (from shapes only) and forward FLOPs from XLA's cost
analysis of the compiled forward pass (batch 1, eval mode; a multiply-add counts as 2 FLOPs).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from imgrec import models


def count_params(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def abstract_variables(model, input_shape):
  """The model's variables as shapes (`jax.eval_shape`: no memory spent, nothing computed)."""
  key = jax.random.PRNGKey(0)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
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
  """{"name", "family", "input_shape", "params", "gflops" (None when not asked), "seconds"}."""
  start = time.perf_counter()
  input_shape = tuple(input_shape or models.input_shape(name))
  model = models.create(name, num_classes)
  variables = abstract_variables(model, input_shape)
  gflops = forward_flops(model, variables, input_shape) / 1e9 if flops else None
  return {"name": name, "family": models.family(name), "input_shape": input_shape,
          "params": count_params(variables["params"]), "gflops": gflops,
          "seconds": time.perf_counter() - start}


def table(rows):
  """A plain-text table of `describe` results."""
  lines = [f"{'model':<20} {'family':<13} {'input':<12} {'params (M)':>11} {'GFLOPs':>9}"]
  for r in rows:
    shape = "x".join(map(str, r["input_shape"]))
    gflops = "-" if r["gflops"] is None else f"{r['gflops']:.4f}"
    lines.append(f"{r['name']:<20} {r['family']:<13} {shape:<12} {r['params'] / 1e6:>11.3f} {gflops:>9}")
  return "\n".join(lines)
