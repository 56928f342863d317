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
    "imgrec.models.cnn": ("small_cnn", "lenet5", "alexnet"),
    "imgrec.models.resnet": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                             "preact_resnet18", "preact_resnet34", "preact_resnet50", "preact_resnet101",
                             "preact_resnet152", "se_resnet18", "se_resnet34", "se_resnet50", "se_resnet101",
                             "se_resnet152", "wrn16_4", "wrn28_10", "wrn40_4"),
    "imgrec.models.vgg": ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"),
    "imgrec.models.inception": ("inception_v1",),
    "imgrec.models.densenet": ("densenet121", "densenet169"),
    "imgrec.models.mobilenet": ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"),
    "imgrec.models.efficientnet": ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"),
    "imgrec.models.convnext": ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large"),
    "imgrec.models.vit": tuple(f"vit_{s}{p}" for s in ("ti", "s", "b", "l") for p in (16, 8, 4, 32)),
    "imgrec.models.rnn": ("lstm", "gru"),
    "imgrec.models.two_tower": ("siglip_b16", "clip_b32"),
}
DEFAULT_INPUT_SHAPE = (224, 224, 3)  # unless a family module's INPUT_SHAPES says otherwise


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


def family(name):
  """The short family name of a registered model ("resnet", "vit", ...)."""
  for module_name, ns in _FAMILIES.items():
    if name in ns:
      return module_name.rsplit(".", 1)[1]
  raise UserError(f"unknown model {name!r}; known models: {', '.join(names())}")


def embed_dim(name):
  """A two-tower model's published embedding size (its `num_classes`), or None for a classifier."""
  return getattr(importlib.import_module(f"imgrec.models.{family(name)}"), "EMBED_DIMS", {}).get(name)


def input_shape(name):
  """The (H, W, C) a model is described at by `imgrec models` (224x224x3 unless its family says otherwise)."""
  module = importlib.import_module(f"imgrec.models.{family(name)}")
  return tuple(getattr(module, "INPUT_SHAPES", {}).get(name, DEFAULT_INPUT_SHAPE))
