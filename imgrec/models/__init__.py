"""Model registry: name -> constructor.

Every constructor takes `num_classes` and keyword options and returns a Flax Linen
module whose `__call__(x, train: bool)` maps float NHWC images to logits. Family
modules register their names in `_FAMILIES` below; `create` is the one entry point.
"""
import importlib

import jax.numpy as jnp

from imgrec.errors import UserError

# Family module -> the names it defines. Modules are imported on first use so that
# `import imgrec.models` stays cheap.
_FAMILIES = {
    "imgrec.models.cnn": ("small_cnn",),
    "imgrec.models.resnet": ("resnet18", "resnet34", "resnet50"),
}


def _table():
  table = {}
  for module_name, names in _FAMILIES.items():
    module = importlib.import_module(module_name)
    for name in names:
      table[name] = module.MODELS[name]
  return table


def names():
  """All registered model names, sorted."""
  return sorted(n for ns in _FAMILIES.values() for n in ns)


def create(name, num_classes, dtype=jnp.float32, **kwargs):
  """Builds the registered model `name` (a Linen module)."""
  table = _table()
  if name not in table:
    raise UserError(f"unknown model {name!r}; known models: {', '.join(names())}")
  try:
    return table[name](num_classes=num_classes, dtype=dtype, **kwargs)
  except TypeError as e:
    raise UserError(f"bad options for model {name!r}: {e}; check config.model.kwargs") from None
