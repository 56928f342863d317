"""Loss functions: pure, over logits and integer labels."""
import jax.numpy as jnp
import optax


def cross_entropy(logits, labels, mask=None):
  """Mean softmax cross-entropy; `mask` (bool [N]) excludes padded examples."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  if mask is None:
    return losses.mean()
  return jnp.sum(jnp.where(mask, losses, 0.0)) / jnp.maximum(mask.sum(), 1)


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def is_finite(x):
  return jnp.all(jnp.isfinite(x))


