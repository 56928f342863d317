"""The FCOS detector: static output shapes that line up with `points`, the class prior, bf16 compute, and the
zoo ResNet's classification path untouched by its new `features` switch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgrec import models
from imgrec.errors import UserError
from imgrec.tasks.detection import model

LEVELS = (3, 4, 5, 6)
HEAD = {"fpn_channels": 16, "head_convs": 1, "levels": LEVELS}


@pytest.fixture(scope="module")
def tiny():
  m = model.create("tiny", 3, head=HEAD)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 72, 56, 3)), jnp.float32)
  # The non-partitionable threefry compiles this init in a quarter of the time (cold: ~7 s against ~26 s).
  with jax.threefry_partitionable(False):
    variables = jax.jit(m.init)(jax.random.key(0), x)
  return m, variables, x


def test_outputs_are_flat_over_levels_and_match_points(tiny):
  m, variables, x = tiny
  out = jax.jit(m.apply)(variables, x)
  # 72x56 at strides 8, 16, 32, 64: ceil sizes 9x7, 5x4, 3x2, 2x1
  p = 9 * 7 + 5 * 4 + 3 * 2 + 2 * 1
  assert out["logits"].shape == (2, p, 3) and out["ltrb"].shape == (2, p, 4) and out["centerness"].shape == (2, p)
  table = model.points(72, 56, LEVELS)
  np.testing.assert_array_equal(out["points"][1], table)
  assert table[0].tolist() == [4, 4, 8] and table[63].tolist() == [8, 8, 16] and table[-1].tolist() == [32, 96, 64]
  assert (np.asarray(out["ltrb"]) > 0).all()
  # the class-prior bias: every class starts near probability 0.01
  np.testing.assert_allclose(jax.nn.sigmoid(out["logits"]).mean(), 0.01, rtol=0.2)
  names = set(variables["params"])
  assert {"lateral3", "lateral5", "fpn4", "extra6", "scale6", "backbone"} <= names and "extra7" not in names


def test_bfloat16_compute_keeps_float32_params_and_outputs(tiny):
  _, variables, x = tiny
  m16 = model.create("tiny", 3, head=HEAD, dtype=jnp.bfloat16)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(jax.eval_shape(m16.init, jax.random.key(0), x)))
  out = jax.eval_shape(m16.apply, variables, x)  # shapes and dtypes only: a second compile costs seconds
  assert all(a.dtype == jnp.float32 for a in out.values())
  # the convolutions do run in bfloat16
  _, inter = jax.eval_shape(lambda v, x: m16.apply(v, x, capture_intermediates=True), variables, x)
  assert inter["intermediates"]["fpn3"]["__call__"][0].dtype == jnp.bfloat16


def test_resnet_features_switch_keeps_the_classifier_names():
  x = jnp.zeros((1, 64, 64, 3))
  plain = jax.eval_shape(models.create("resnet18", 10, stem="imagenet").init, jax.random.key(0), x)
  feats = jax.eval_shape(models.create("resnet18", 10, features=True, stem="imagenet").init, jax.random.key(0), x)
  flat = lambda t: {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(t)}
  assert flat(feats) == {k for k in flat(plain) if "'head'" not in k}
  out = jax.eval_shape(models.create("resnet18", 10, features=True, stem="imagenet").apply, feats, x)
  assert [o.shape for o in out] == [(1, 16, 16, 64), (1, 8, 8, 128), (1, 4, 4, 256), (1, 2, 2, 512)]


def test_backbone_without_features_is_refused():
  with pytest.raises(UserError, match="ResNet family"):
    model.create("vgg11", 3)
