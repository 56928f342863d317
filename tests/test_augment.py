import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgrec.data import augment
from imgrec.errors import UserError

EXAMPLE_SPECS = ["crop(pad=4)", "resized_crop", "flip", "rotate(20)", "translate(0.2)", "salt_pepper(0.1)",
                 "gaussian_noise(0.1)", "cutout(6)", "erase(p=1.0)", "brightness(0.3)", "contrast(0.5)",
                 "randaugment(2, 9)"]


def batch(n=8, h=16, w=12, c=3):
  x = jax.random.uniform(jax.random.key(0), (n, h, w, c))
  y = jax.nn.one_hot(jnp.arange(n) % 4, 4)
  return x, y


@pytest.mark.parametrize("spec", EXAMPLE_SPECS)
def test_example_op_shape_determinism_and_variety(spec):
  x, y = batch()
  ops = augment.parse(spec)
  f = jax.jit(lambda k, x, y: augment.apply(ops, k, x, y))
  a, ya = f(jax.random.key(1), x, y)
  b, _ = f(jax.random.key(1), x, y)
  c, _ = f(jax.random.key(2), x, y)
  assert a.shape == x.shape and a.dtype == x.dtype
  np.testing.assert_array_equal(a, b)  # same key, same result
  np.testing.assert_array_equal(ya, y)  # per-example ops leave labels alone
  assert not np.array_equal(a, c)
  # Each example gets its own randomness: the changes differ across examples (same input image).
  same = jnp.broadcast_to(x[:1], x.shape)
  out, _ = f(jax.random.key(3), same, y)
  deltas = np.asarray(out - same).reshape(len(x), -1)
  assert len({d.tobytes() for d in deltas}) > 1
  assert float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6


@pytest.mark.parametrize("spec", ["mixup(0.4)", "cutmix(1.0)"])
def test_batch_ops_mix_labels_summing_to_one(spec):
  x, y = batch()
  a, ya = augment.apply(augment.parse(spec), jax.random.key(4), x, y)
  assert a.shape == x.shape
  np.testing.assert_allclose(np.asarray(ya).sum(-1), 1.0, atol=1e-6)
  assert (np.asarray(ya).max(-1) < 1.0).any()  # labels really were mixed


def test_cutmix_label_weight_equals_pasted_area():
  x = jnp.zeros((2, 10, 10, 1)).at[1].set(1.0)  # example 1 white, 0 black
  y = jax.nn.one_hot(jnp.array([0, 1]), 2)
  for seed in range(5):
    a, ya = augment.cutmix(jax.random.key(seed), x, y)
    white_fraction = float(a[0].mean())  # example 0 got white pixels only from example 1 (or itself: 0)
    assert white_fraction == pytest.approx(float(ya[0, 1]), abs=1e-6) or float(ya[0, 1]) == pytest.approx(0, abs=1e-6)


def test_flip_and_crop_values():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1) / 16
  flipped, _ = augment.apply(augment.parse("flip(p=1.0)"), jax.random.key(0), x, jnp.ones((1, 1)))
  np.testing.assert_array_equal(flipped[0, :, :, 0], x[0, :, ::-1, 0])
  same, _ = augment.apply(augment.parse("crop(pad=0)|rotate(0)|translate(0)"), jax.random.key(0), x,
                          jnp.ones((1, 1)))
  np.testing.assert_allclose(same, x, atol=1e-6)


@pytest.mark.parametrize("spec,message", [("blur", "unknown augmentation 'blur'"), ("crop(size=3)", "no argument 'size'"),
                                          ("crop(pad=x)", "bad arguments"), ("crop(1, 2)", "at most 1"),
                                          ("flip(", "bad augmentation"),
                                          ("flip(3)", r"flip\(p=3\) is out of range: p must be >= 0.0 and <= 1.0"),
                                          ("crop(pad=-1)", "pad must be >= 0"), ("crop(2.5)", "whole number"),
                                          ("mixup(alpha=0)", "alpha must be > 0"), ("randaugment(2, 15)", "m must be"),
                                          ("resized_crop(scale=(0.9, 0.2))", "low <= high"),
                                          ("flip(p=(0.1, 0.2))", "takes one number"), ("resized_crop(0.5)", "a \\(low, high\\) pair"),
                                          ("erase(scale=(0.1, 'a'))", "needs a number")])
def test_bad_specs_are_clear_errors(spec, message):
  with pytest.raises(UserError, match=message):
    augment.parse(spec)
