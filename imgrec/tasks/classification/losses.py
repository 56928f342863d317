"""Loss functions: pure, over logits and labels.

The distillation objective is built from the teacher's model and normalisation; the teacher's
variables are an argument of the objective (and so of the jitted step), never closed over, so the
compiled program does not carry the teacher's weights as constants.
"""
import jax
import jax.numpy as jnp
import optax

from imgrec.errors import UserError


def cross_entropy(logits, labels, mask=None):
  """Mean softmax cross-entropy; `mask` (bool [N]) excludes padded examples."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  if mask is None:
    return losses.mean()
  return jnp.sum(jnp.where(mask, losses, 0.0)) / jnp.maximum(mask.sum(), 1)


def soft_cross_entropy(logits, targets):
  """Mean cross-entropy against soft targets (one-hot, smoothed or mixed), in float32."""
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def kd_loss(student_logits, teacher_logits, targets, alpha, temperature):
  """alpha * CE(targets) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean.

  `targets` are the train step's soft labels (one-hot, smoothed or mixed)."""
  t = temperature
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
  log_p_t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / t)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1).mean()
  return alpha * soft_cross_entropy(student_logits, targets) + (1 - alpha) * t**2 * kl


def distillation(teacher_model, teacher_info, info, alpha, temperature):
  """The train step's `objective(logits, targets, x, teacher_variables)` for knowledge distillation.

  `x` is the student's normalised input; the teacher sees it re-expressed in its own normalisation.
  `info` / `teacher_info` are the two runs' dataset.json contents (class names, mean, std).
  """
  if teacher_info["class_names"] != info["class_names"]:
    raise UserError(f"distill.teacher predicts {len(teacher_info['class_names'])} classes "
                    f"{teacher_info['class_names'][:5]}..., this run has {info['class_names'][:5]}...: they must match")
  if not 0 <= alpha <= 1 or temperature <= 0:
    raise UserError(f"distill.alpha must be in [0, 1] and distill.temperature > 0, got {alpha}, {temperature}")
  t_std = jnp.asarray(teacher_info["std"], jnp.float32)
  scale = jnp.asarray(info["std"], jnp.float32) / t_std
  shift = (jnp.asarray(info["mean"], jnp.float32) - jnp.asarray(teacher_info["mean"], jnp.float32)) / t_std

  def objective(logits, targets, x, teacher_variables):
    teacher_logits = teacher_model.apply(teacher_variables, x * scale + shift, train=False)
    return kd_loss(logits, teacher_logits, targets, alpha, temperature)
  return objective
