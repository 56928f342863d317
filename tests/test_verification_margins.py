"""Margin heads and losses (imgrec/tasks/verification/margins.py) against pytorch-metric-learning's ArcFaceLoss
and CosFaceLoss on the same random embeddings and weights; the embedding model on zoo backbones."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses as pml

from imgrec import models
from imgrec.tasks.verification import margins


def _inputs(seed, n=32, d=24, k=11, opposite=6):
  """Random embeddings [n, d], weights [d, k], labels; the first `opposite` embeddings point almost away from
  their identity's weights, so theta + m passes pi and the fallback is used."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(d, k)).astype(np.float32)
  labels = rng.integers(k, size=n)
  e = rng.normal(size=(n, d)).astype(np.float32)
  e[:opposite] = -w[:, labels[:opposite]].T * 5 + rng.normal(size=(opposite, d)) * 0.05
  return e, w, labels


def _ours(loss, e, w, labels, scale, margin):
  cos = margins.l2_normalize(jnp.asarray(e)) @ margins.l2_normalize(jnp.asarray(w), axis=0)
  return float(margins.loss_fn(loss, scale, *margins.margins(loss, margin))(cos, jnp.asarray(labels))[0])


def _theirs(cls, e, w, labels, **kw):
  ref = cls(num_classes=w.shape[1], embedding_size=w.shape[0], **kw)
  with torch.no_grad():
    ref.W.copy_(torch.from_numpy(w))
  return float(ref(torch.from_numpy(e), torch.from_numpy(labels)).detach())


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale,margin", [(64.0, 0.5), (30.0, 0.3)])
def test_arcface_matches_pytorch_metric_learning(seed, scale, margin):
  e, w, labels = _inputs(seed)
  cos = margins.l2_normalize(e) @ margins.l2_normalize(w, axis=0)
  theta = np.arccos(np.clip(np.asarray(cos)[np.arange(len(labels)), labels], -1, 1))
  assert (theta + margin > np.pi).sum() >= 3  # the fallback branch is exercised
  ours = _ours("arcface", e, w, labels, scale, margin)
  theirs = _theirs(pml.ArcFaceLoss, e, w, labels, margin=np.degrees(margin), scale=scale)
  np.testing.assert_allclose(ours, theirs, rtol=2e-4)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale,margin", [(64.0, 0.35), (30.0, 0.2)])
def test_cosface_matches_pytorch_metric_learning(seed, scale, margin):
  e, w, labels = _inputs(seed)
  ours = _ours("cosface", e, w, labels, scale, margin)
  theirs = _theirs(pml.CosFaceLoss, e, w, labels, margin=margin, scale=scale)
  np.testing.assert_allclose(ours, theirs, rtol=2e-4)


def test_the_margin_changes_the_loss_and_softmax_is_plain_cross_entropy():
  e, w, labels = _inputs(3)
  assert _ours("arcface", e, w, labels, 64.0, 0.5) > _ours("arcface", e, w, labels, 64.0, 0.0) + 1.0
  logits = np.asarray(e @ w)
  ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
  ours = margins.loss_fn("softmax", 1.0, 1.0, 0.0, 0.0)(jnp.asarray(logits), jnp.asarray(labels))[0]
  np.testing.assert_allclose(float(ours), float(ref), rtol=1e-5)


def test_combined_margin_formula_and_its_fallback():
  cos = jnp.asarray([0.9, 0.2, -0.5, -0.99])
  m1, m2, m3 = 1.2, 0.3, 0.1
  theta = np.arccos(np.asarray(cos))
  want = np.where(m1 * theta + m2 <= np.pi, np.cos(m1 * theta + m2) - m3, np.asarray(cos) - m3 - m2 * np.sin(m2))
  np.testing.assert_allclose(margins.target_logit(cos, m1, m2, m3), want, rtol=1e-5)
  assert (m1 * theta + m2 > np.pi).any() and (m1 * theta + m2 <= np.pi).any()
  # ArcFace and CosFace are the combined margin's special cases
  assert margins.margins("arcface", 0.5) == (1.0, 0.5, 0.0)
  assert margins.margins("cosface", 0.35) == (1.0, 0.0, 0.35)


def test_gradients_are_finite_at_cosine_one():
  labels = jnp.asarray([0, 1])
  cos = jnp.asarray([[1.0, 0.0], [0.0, -1.0]])
  g = jax.grad(lambda c: margins.loss_fn("arcface", 64.0, 1.0, 0.5, 0.0)(c, labels)[0])(cos)
  assert np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("name,kw", [("small_cnn", {}), ("resnet18", {"width": 8})])
def test_embedder_uses_the_backbones_pooled_features_and_no_head(name, kw):
  model = margins.Embedder(models.create(name, 1, **kw), dim=16, num_classes=5, dropout=0.1)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)))
  assert "head" not in v["params"]["backbone"]  # the zoo head is skipped, not trained and thrown away
  assert set(v["params"]) == {"backbone", "embedding", "identities"}
  assert "scale" not in v["params"]["embedding"]["bn_out"]  # insightface's last BN: no learnt scale
  out, _ = model.apply(v, jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3)), train=True,
                       rngs={"dropout": jax.random.PRNGKey(2)}, mutable=["batch_stats"])
  assert out["embedding"].shape == (4, 16) and out["logits"].shape == (4, 5)
  assert np.all(np.abs(np.asarray(out["logits"])) <= 1.0 + 1e-5)  # cosines
