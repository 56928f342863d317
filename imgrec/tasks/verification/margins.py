"""The embedding model and the margin losses of face recognition, in pure JAX/Flax.

  Embedder(backbone, dim, dropout, num_classes, normalized_classes)  any zoo backbone's pooled features ->
      EmbeddingHead (BN, dropout, linear, BN: insightface's output layer) -> {"embedding" [B, D] (not yet
      L2-normalised), "logits" [B, K]: cosines to the K training identities' weight vectors, or plain linear
      logits for the softmax baseline}
  margin_logits(cos, labels, scale, m1, m2, m3)   the combined margin: the target identity's cosine becomes
      cos(m1 * theta + m2) - m3 (SphereFace m1, ArcFace m2, CosFace m3), every logit times `scale`
  LOSSES: loss name -> (m1, m2, m3) from config.verification's margin (ArcFace: (1, m, 0), CosFace: (1, 0, m),
      combined: its own m1, m2, m3; softmax: plain cross-entropy on unnormalised logits)

Why an interceptor for the pooled features: every zoo model ends in `mean pool (or flatten) -> Dense(num_classes,
name=one of HEAD_NAMES)` as a direct child; calling the backbone (built with num_classes=1, named "backbone") with
that one Dense replaced by the identity gives its pooled features without touching the model zoo, and creates no
head parameters.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The classification head's name in each zoo family (a direct child of the backbone).
HEAD_NAMES = ("head", "classifier", "classifier_3", "classifier_6", "fc")
LOSSES = ("arcface", "cosface", "combined", "softmax")
BN = dict(momentum=0.9, epsilon=2e-5)  # insightface's BatchNorm settings
COS_CLIP = 1.0 - 1e-6  # arccos' gradient is infinite at +-1


def pooled_features(backbone, x, train):
  """The backbone's input to its classification head ([B, F]): the head's Dense is skipped, so none is created."""
  def skip_head(call, args, kwargs, context):
    m = context.module
    if (isinstance(m, nn.Dense) and context.method_name == "__call__" and m.name in HEAD_NAMES
        and m.scope.path[-2:-1] == ("backbone",) and m.features == getattr(m.parent, "num_classes", None)):
      return args[0]  # the backbone's own head (small_cnn's hidden "fc" is wider than num_classes)
    return call(*args, **kwargs)
  with nn.intercept_methods(skip_head):
    out = backbone(x, train=train)
  return out.reshape((out.shape[0], -1))


class EmbeddingHead(nn.Module):
  """BN -> dropout -> linear -> BN, insightface's embedding layer (its last BN has no learnt scale: the
  feature scale is fixed, only a shift is learnt)."""
  dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn_in", **BN)(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.dim, dtype=self.dtype, name="linear")(x)
    x = nn.BatchNorm(use_running_average=not train, use_scale=False, dtype=self.dtype, name="bn_out", **BN)(x)
    return x.astype(jnp.float32)


def l2_normalize(x, axis=-1, eps=1e-12):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


class ClassWeights(nn.Module):
  """One weight vector per training identity. `normalized`: cosines between L2-normalised embeddings and
  weights (the margin losses); otherwise plain linear logits with a bias (the softmax baseline)."""
  num_classes: int
  normalized: bool = True

  @nn.compact
  def __call__(self, e):
    if not self.normalized:
      return nn.Dense(self.num_classes, name="linear")(e)
    w = self.param("weights", nn.initializers.normal(0.01), (e.shape[-1], self.num_classes))
    return l2_normalize(e) @ l2_normalize(w, axis=0)


class Embedder(nn.Module):
  """backbone (a zoo model) -> pooled features -> EmbeddingHead -> {"embedding", "logits"}. The identities'
  weights are computed in eval mode too, so `init` (run with train=False) creates them."""
  backbone: nn.Module
  dim: int
  num_classes: int
  dropout: float = 0.0
  normalized_classes: bool = True
  dtype: jnp.dtype = jnp.float32
  flip: bool = True  # evaluation and serving add the mirror image's embedding (the task's _embed reads it)

  @nn.compact
  def __call__(self, x, train=False):
    f = pooled_features(self.backbone, x, train)
    e = EmbeddingHead(self.dim, self.dropout, self.dtype, name="embedding")(f, train)
    logits = ClassWeights(self.num_classes, self.normalized_classes, name="identities")(e)
    return {"embedding": e, "logits": logits.astype(jnp.float32)}


def margins(loss, margin, m1=1.0, m2=0.0, m3=0.0):
  """(m1, m2, m3) of a loss name: ArcFace's additive angle, CosFace's additive cosine, or the combined ones."""
  if loss == "arcface":
    return 1.0, margin, 0.0
  if loss == "cosface":
    return 1.0, 0.0, margin
  if loss == "combined":
    return m1, m2, m3
  return 1.0, 0.0, 0.0  # softmax: no margin


def target_logit(cos, m1, m2, m3):
  """cos(m1 * theta + m2) - m3 of the target cosines, kept decreasing in theta: where m1 * theta + m2 passes
  pi (cos would turn back up) it falls back to cos(theta) - m3 - m2 * sin(m2), insightface's ArcFace fallback
  (the same as pytorch-metric-learning's), which CosFace (m2 = 0) never reaches."""
  theta = jnp.arccos(jnp.clip(cos, -COS_CLIP, COS_CLIP))
  inside = m1 * theta + m2 <= np.pi
  return jnp.where(inside, jnp.cos(m1 * theta + m2) - m3, cos - m3 - m2 * np.sin(m2))


def margin_logits(cos, labels, scale, m1, m2, m3):
  """scale * cosines [B, K], the target identity's with its margin (labels int [B])."""
  onehot = jax.nn.one_hot(labels, cos.shape[-1], dtype=cos.dtype)
  target = jnp.sum(cos * onehot, -1)
  shift = target_logit(target, m1, m2, m3) - target
  return scale * (cos + onehot * shift[:, None])


def cross_entropy(logits, labels):
  """Mean softmax cross-entropy of int labels."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], -1))


def loss_fn(loss, scale, m1, m2, m3):
  """`fn(logits or cosines [B, K], labels [B]) -> (mean loss, identity accuracy of the unmargined logits)`."""
  def fn(logits, labels):
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    if loss == "softmax":
      return cross_entropy(logits, labels), accuracy
    return cross_entropy(margin_logits(logits, labels, scale, m1, m2, m3), labels), accuracy
  return fn
