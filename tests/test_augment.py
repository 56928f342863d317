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
  """Each example's mean pixel is the label-weighted mean of the class values it was mixed from: the weight of
  the pasted class is the pasted area. Every example has its own value, so a paste from itself shows as none."""
  values = jnp.array([0.0, 1 / 3, 2 / 3, 1.0])
  x = jnp.broadcast_to(values[:, None, None, None], (4, 10, 10, 1))
  y = jax.nn.one_hot(jnp.arange(4), 4)
  mixed_any = False
  for seed in range(5):
    a, ya = augment.cutmix(jax.random.key(seed), x, y)
    np.testing.assert_allclose(np.asarray(a).mean(axis=(1, 2, 3)), np.asarray(ya) @ np.asarray(values), atol=1e-6)
    mixed_any |= bool((np.asarray(ya).max(-1) < 1 - 1e-6).any())
  assert mixed_any


def test_rotate_moves_an_impulse_where_the_rotation_says():
  x = jnp.zeros((15, 15, 1)).at[7, 11, 0].set(1.0)  # centred coordinates (row 0, col +4)
  key = jax.random.key(8)
  angle = float(jax.random.uniform(key, (), minval=-90.0, maxval=90.0)) * np.pi / 180
  assert abs(angle) > np.radians(20)  # a clear rotation (this key's draw)
  out = np.asarray(augment.rotate(key, x, deg=90.0))[..., 0]
  # The op samples input = R(angle) @ output, so the impulse lands at R(-angle) @ (0, 4).
  c, s_ = np.cos(angle), np.sin(angle)
  expected = np.array([[c, s_], [-s_, c]]) @ np.array([0.0, 4.0])
  rows, cols = np.mgrid[:15, :15] - 7.0
  centroid = np.array([(out * rows).sum(), (out * cols).sum()]) / out.sum()
  np.testing.assert_allclose(centroid, expected, atol=0.25)
  assert not np.allclose(centroid, np.array([[c, -s_], [s_, c]]) @ np.array([0.0, 4.0]), atol=1.0)  # not the inverse


def test_resized_crop_of_a_constant_is_constant_and_brightness_shifts_by_its_draw():
  x = jnp.full((12, 9, 3), 0.6)
  for seed in range(4):
    np.testing.assert_allclose(augment.resized_crop(jax.random.key(seed), x), 0.6, atol=1e-6)
  key = jax.random.key(7)
  delta = float(jax.random.uniform(key, (), minval=-0.3, maxval=0.3))
  out = augment.brightness(key, jnp.full((4, 4, 1), 0.5), delta=0.3)
  assert abs(delta) > 0.01
  np.testing.assert_allclose(np.asarray(out), 0.5 + delta, atol=1e-6)


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


def test_unmixed_refuses_ops_that_mix_two_images():
  assert [name for name, _ in augment.unmixed("flip|rotate(10)", "why")] == ["flip", "rotate"]
  with pytest.raises(UserError, match=r"data.augment 'mixup' mixes images of two examples; one caption each: drop it"):
    augment.unmixed("flip|mixup(0.2)", "one caption each")
