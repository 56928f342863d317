"""Segmentation heads (FCN, ASPP) on backbone features, the loss with the ignore label, confusion matrices,
logits warped back to the source's pixels, and mIoU's convention for absent classes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from imgrec.data import decode
from imgrec.errors import UserError
from imgrec.tasks.segmentation import metrics, model, synthetic


class DictBackbone(nn.Module):
  """A backbone whose features mode gives {stride: map}, as every family will."""

  @nn.compact
  def __call__(self, x, train=False):
    a = nn.Conv(6, (3, 3), strides=(8, 8))(x)
    return {8: a, 16: nn.Conv(12, (3, 3), strides=(2, 2))(a)}


def test_pick_a_feature_map():
  maps = {4: jnp.zeros((1, 16, 12, 4)), 8: jnp.zeros((1, 8, 6, 8)), 32: jnp.zeros((1, 2, 2, 8))}
  assert model.pick(maps, 0).shape[1] == 2 and model.pick(maps, 8).shape[1] == 8
  with pytest.raises(UserError, match="feature_stride=16.*4, 8, 32"):
    model.pick(maps, 16)


@pytest.mark.parametrize("head", ["fcn", "aspp"])
def test_heads_output_logits_at_input_size(head):
  m = model.create("tiny", 5, head={"head": head, "channels": 8, "aspp_rates": (1, 2)})
  x = jnp.ones((2, 64, 48, 3))
  v = m.init(jax.random.key(0), x)
  out = m.apply(v, x)
  assert out.shape == (2, 64, 48, 5) and out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())
  assert "batch_stats" in v
  dict_model = model.Segmenter(DictBackbone(), 3, head=head, channels=4, aspp_rates=(1,), feature_stride=8)
  out = dict_model.apply(dict_model.init(jax.random.key(1), x), x)
  assert out.shape == (2, 64, 48, 3)


def test_no_features_mode_is_a_user_error():
  with pytest.raises(UserError, match="features"):
    model.create("lenet5", 3)


def test_cross_entropy_ignores_255():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (2, 4, 5)).astype(np.uint8)
  labels[0, :2] = 255
  loss, acc = metrics.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  valid = labels != 255
  want = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None].astype(int), -1)[..., 0][valid].mean()
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(acc), (logits.argmax(-1) == labels)[valid].mean(), rtol=1e-6)
  changed = logits.copy()
  changed[0, :2] += 100.0  # logits of ignored pixels do not matter
  np.testing.assert_allclose(float(metrics.cross_entropy(jnp.asarray(changed), jnp.asarray(labels))[0]), want,
                             rtol=1e-5)


def test_confusion_matches_numpy():
  rng = np.random.default_rng(1)
  pred = rng.integers(0, 4, (3, 7, 9))
  target = rng.integers(0, 4, (3, 7, 9)).astype(np.uint8)
  target[1, 2:4] = 255
  valid = np.ones((3, 7, 9), bool)
  valid[2] = False  # a padded example of the batch
  got = np.asarray(metrics.confusion(jnp.asarray(pred), jnp.asarray(target), 4, jnp.asarray(valid)))
  ok = valid & (target != 255)
  want = np.bincount(target[ok].astype(int) * 4 + pred[ok], minlength=16).reshape(4, 4)
  np.testing.assert_array_equal(got, want)


def test_to_source_inverts_the_plan():
  """Logits that are a one-hot label map after letterbox / flip planning give back the source label map."""
  labels = synthetic.generate("test", 1, 48)[1][0]
  for pp in ("decode|letterbox(48)", "decode|resize(96)", "decode|letterbox(64)|flip(p=1.0)"):
    from imgrec.data import preprocess
    image, affine = preprocess.process_with_map(preprocess.parse(pp), np.zeros((48, 48, 3), np.uint8), 3,
                                                np.random.default_rng(0))
    warped = decode.warp_labels(labels, affine, *image.shape[:2], fill=0)
    logits = jax.nn.one_hot(warped, 11)[None]
    got = metrics.to_source(logits, jnp.asarray([affine], jnp.float32), 48)[0]
    agree = (np.asarray(got) == labels).mean()
    assert agree > (0.999 if "resize(96)" in pp else 0.97), (pp, agree)  # 48 -> 64: some pixels are blended


def test_scores_convention():
  m = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2: absent from truth and prediction
  s = metrics.scores(m, ("a", "b", "c"))
  assert np.isnan(s["per_class"]["c"])
  np.testing.assert_allclose(s["per_class"]["a"], 5 / 8)
  np.testing.assert_allclose(s["per_class"]["b"], 3 / 6)
  np.testing.assert_allclose(s["mIoU"], (5 / 8 + 3 / 6) / 2)
  np.testing.assert_allclose(s["pixel_accuracy"], 8 / 11)
  m2 = np.array([[5, 0], [0, 0]]) + np.array([[0, 2], [0, 0]])  # class 1 predicted, never true: IoU 0, counted
  assert metrics.scores(m2, ("a", "b"))["per_class"]["b"] == 0.0


@pytest.mark.slow
def test_heads_learn_a_batch():
  """A few Adam steps on 8 digit canvases: the loss falls by half (both heads can fit dense targets)."""
  images, labels = synthetic.generate("train", 8, 48)
  x, y = jnp.asarray(images, jnp.float32) / 255.0, jnp.asarray(labels)
  for head in ("fcn", "aspp"):
    m = model.create("tiny", 11, head={"head": head, "channels": 16, "aspp_rates": (1, 2), "dropout": 0.0},
                     stem="cifar")
    v = m.init(jax.random.key(0), x[:1])
    tx = optax.adam(1e-2)
    params, stats = v["params"], v["batch_stats"]
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt):
      def loss_fn(p):
        out, new = m.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return metrics.cross_entropy(out, y)[0], new["batch_stats"]
      (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt = tx.update(g, opt, params)
      return optax.apply_updates(params, updates), stats, opt, loss

    losses = []
    for _ in range(40):
      params, stats, opt, loss = step(params, stats, opt)
      losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], (head, losses[0], losses[-1])
