"""Every backbone family's features mode (models.create_backbone): {stride: NHWC map} with ceil-sized maps at
strides 4/8/16/32, shapes known without computing (feature_shapes), the classifier's parameter names kept (only
the head left out, only own-named layers added), and the classifier's own trunk computed (pooling the deepest
map through the head gives the logits)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgrec import models
from imgrec.errors import UserError
from imgrec.models import vit


def dense(params, x):
  return x @ params["kernel"] + params["bias"]


# The classifiers' heads on the global mean of the stride-32 map (dropout is off in eval).
HEADS = {"head": lambda p, x: dense(p["head"], x), "classifier": lambda p, x: dense(p["classifier"], x),
         "classifier_0": lambda p, x: dense(p["classifier_3"], jax.nn.hard_swish(dense(p["classifier_0"], x)))}

# name: (tiny kwargs, image size, the classifier's own top-level names, the top-level names features mode adds)
FAMILIES = {
    "resnet18": ({"stage_sizes": (1, 1, 1, 1), "width": 8}, (72, 56), {"head"}, set()),
    "preact_resnet18": ({"stage_sizes": (1, 1, 1, 1), "width": 8}, (40, 70), {"head"}, set()),
    "convnext_tiny": ({"depths": (1, 1, 1, 1), "width": 8}, (96, 64), {"head_ln", "head"},
                      {f"stage{i}_out_ln" for i in range(1, 5)}),
    # width 16 does not split into vit_s16's 6 heads: 4 heads of 4 (vit.split_heads). "gap": the classifier pools
    # the last block's patch tokens, which are the stride-16 map (the class-token case: test_detection_model.py).
    "vit_s16": ({"width": 16, "depth": 1, "mlp_dim": 32, "pool": "gap"}, (64, 96), {"head"}, {"pyramid"}),
    "mobilenet_v2": ({"width_mult": 0.25}, (72, 56), {"classifier"}, set()),
    "mobilenet_v3_small": ({"width_mult": 0.25}, (40, 70), {"classifier_0", "classifier_3"}, set()),
    "efficientnet_b0": ({"width_mult": 0.25, "depth_mult": 0.25}, (72, 56), {"classifier"}, set()),
}


def flat(tree):
  return {"/".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def random_variables(abstract, seed=0):
  """Values for abstract variables without an init (which would cost a compile): small random weights,
  positive BatchNorm variances and LayerNorm scales near 1."""
  rng = np.random.default_rng(seed)
  def value(path, a):
    name = str(path[-1].key)
    if name in ("var", "scale"):
      return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype)
    return jnp.asarray(rng.normal(0, 0.3, a.shape), a.dtype)
  return jax.tree_util.tree_map_with_path(value, abstract)


def test_every_feature_family_is_covered():
  assert {models.family(n) for n in FAMILIES} == set(models.FEATURE_FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_features_of_every_family(name):
  """Same parameter names and shapes as the classifier but its head, plus only the family's own; maps at strides 4
  to 32 with ceil sizes, as feature_shapes says; and with the classifier's variables, the global mean of the
  stride-32 map (stride 16 for the ViT: the pyramid's map at its patch) through the head gives its logits, so
  features mode computes the classifier's own trunk."""
  kwargs, size, head, added = FAMILIES[name]
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *size, 3)), jnp.float32)
  stem = {"stem": "imagenet"} if hasattr(models.create(name, 5, **kwargs), "stem") else {}
  classifier, backbone = models.create(name, 5, **kwargs, **stem), models.create_backbone(name, **kwargs)
  plain = jax.eval_shape(classifier.init, jax.random.key(0), x)
  feats = jax.eval_shape(backbone.init, jax.random.key(0), x)
  top = lambda n: n.split("/")[1]
  shapes = lambda tree: {n: a.shape for n, a in flat(tree).items()}
  shared = {n: s for n, s in shapes(plain).items() if top(n) not in head}
  assert {n: s for n, s in shapes(feats).items() if top(n) not in added} == shared
  assert {top(n) for n in shapes(feats) if n not in shared} == added
  assert {top(n) for n in shapes(plain) if n not in shared} == head

  variables = random_variables({c: {**plain[c], **feats[c]} for c in plain})
  out = jax.jit(backbone.apply)(variables, x)
  assert {4, 8, 16, 32} <= set(out)
  assert {s: a.shape[1:] for s, a in out.items()} == models.feature_shapes(backbone, (*size, 3))
  for s, a in out.items():
    assert a.shape[:3] == (2, -(-size[0] // s), -(-size[1] // s)) and a.dtype == jnp.float32, (s, a.shape)
    assert np.isfinite(np.asarray(a)).all() and float(jnp.std(a[0] - a[1])) > 0  # the maps see the images
  if name == "convnext_tiny":  # its maps pass through norms of their own; the head's LayerNorm sees a mean only
    ln = variables["params"]["stage4_out_ln"]
    np.testing.assert_allclose(jnp.mean((out[32] - ln["bias"]) / ln["scale"], -1), 0, atol=1e-4)
    return
  logits = jax.jit(classifier.apply)(variables, x)
  trunk = out[16 if name.startswith("vit") else 32]
  np.testing.assert_allclose(HEADS[min(head)](variables["params"], jnp.mean(trunk, axis=(1, 2))), logits,
                             rtol=1e-4, atol=1e-4)
  if name.startswith("vit"):  # the pyramid: deconvs halve the channels, the max-pool keeps them
    assert [out[s].shape[-1] for s in (4, 8, 16, 32)] == [4, 8, 16, 16]
    np.testing.assert_allclose(out[32], nn.max_pool(out[16], (2, 2), (2, 2)))


def test_upsample2_is_a_2x2_stride_2_transposed_conv():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  dense = nn.Dense(4 * 6)
  params = dense.init(jax.random.key(0), x)
  y = np.asarray(vit.upsample2(x, lambda v: dense.apply(params, v)))
  k = np.asarray(params["params"]["kernel"]).reshape(5, 2, 2, 6)
  b = np.asarray(params["params"]["bias"]).reshape(2, 2, 6)
  for a in (0, 1):
    for c in (0, 1):  # output pixel (2i + a, 2j + c) reads input pixel (i, j) through tap (a, c) only
      np.testing.assert_allclose(y[:, a::2, c::2], x @ k[:, a, c] + b[a, c], rtol=1e-5, atol=1e-5)


def test_vit_features_refuse_sizes_off_the_patch_grid():
  backbone = models.create_backbone("vit_s16", width=16, depth=1, mlp_dim=32)
  with pytest.raises(UserError, match="multiples of it: patch 16, images 72x64"):
    models.feature_shapes(backbone, (72, 64, 3))
  with pytest.raises(UserError, match="power-of-two patch"):
    models.feature_shapes(models.create_backbone("vit_s16", width=16, depth=1, patch=14), (56, 56, 3))


def test_families_without_features_are_refused():
  with pytest.raises(UserError, match="vgg11.*gives no multi-scale features.*convnext"):
    models.create_backbone("vgg11")
