"""Model registry: name -> constructor.

Every constructor takes `num_classes` and keyword options and returns a Flax Linen
module whose `__call__(x, train: bool)` maps float NHWC images to logits. Family
modules register their names in `_FAMILIES` below; `create` is the one entry point.

Features (dense tasks: detection, segmentation). The families in FEATURE_FAMILIES take `features=True`;
`create_backbone(name, **kwargs)` builds one so, on the ImageNet stem where the family has a choice. Then
`apply(variables, x, train=...)` returns a dict {stride: float NHWC map}: for an H x W image the map at stride s
is ceil(H / s) x ceil(W / s) cells (cell (i, j) stands for pixels [s*i, s*(i+1)) x [s*j, s*(j+1))); ConvNeXt and ViT
need sides that are multiples of 32 and of the patch for that. Strides per family:
  resnet            4, 8, 16, 32: each stage's output (the pre-activation variant's last one normalised)
  convnext          4, 8, 16, 32: each stage's output through a LayerNorm of its own (`stage{i}_out_ln`)
  vit               4, 8, 16, 32: ViTDet's simple feature pyramid from the last block's tokens (`pyramid`)
  mobilenet, efficientnet  (2,) 4, 8, 16, 32: the last block at each stride, the last 1x1 conv at 32 (no 2 in
                    mobilenet_v3_small, whose first block is strided)
Features mode keeps every classifier parameter's name and creates no head; whatever it adds (ConvNeXt's output
norms, ViT's pyramid) lives under its own names, so a classifier's checkpoint loads into a backbone by name
(transfer.prefix). `feature_shapes(backbone, (H, W, 3))` gives {stride: (h, w, channels)} without computing.
"""
import importlib

import jax
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


FEATURE_FAMILIES = ("resnet", "convnext", "vit", "efficientnet", "mobilenet")


def create_backbone(name, dtype=jnp.float32, **kwargs):
  """The registered model `name` in features mode (module docstring): apply -> {stride: NHWC map}. A family
  with a choice of stem gets the ImageNet one unless `kwargs` say otherwise, so that the strides are the
  standard ones at any image size."""
  if family(name) not in FEATURE_FAMILIES:
    raise UserError(f"model {name!r} gives no multi-scale features; backbones for dense tasks are the "
                    f"{', '.join(FEATURE_FAMILIES)} families (e.g. resnet50, convnext_tiny, vit_s16)")
  model = create(name, num_classes=0, dtype=dtype, features=True, **kwargs)
  if hasattr(model, "stem") and "stem" not in kwargs:
    model = model.clone(stem="imagenet")
  return model


def feature_shapes(backbone, input_shape):
  """{stride: (h, w, channels)} of `backbone` (from create_backbone) for one (H, W, C) image, by shape
  inference only (jax.eval_shape: nothing is initialised or computed)."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  out = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.key(0), x)[0], x)
  return {s: tuple(a.shape[1:]) for s, a in sorted(out.items())}
