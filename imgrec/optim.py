"""The optax optimiser and learning-rate schedule a config describes."""
import jax
import optax

from imgrec.errors import UserError


def schedule(cfg, total_steps, steps_per_epoch):
  """Learning rate per step: linear warm-up, then cosine decay to 0 or constant."""
  o = cfg.optim
  warmup = min(int(o.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, max(total_steps, warmup + 1), end_value=0.0)
  if o.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warmup), optax.constant_schedule(o.lr)],
                                [warmup])
  raise UserError(f"unknown optim.schedule {o.schedule!r}; use cosine or constant")


def decay_mask(params):
  """Weight decay applies to kernels and embeddings, not to biases and norm scales (ndim <= 1)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make(cfg, total_steps, steps_per_epoch):
  o = cfg.optim
  lr = schedule(cfg, total_steps, steps_per_epoch)
  if o.name == "adam":
    tx = optax.adam(lr)
  elif o.name == "adamw":
    tx = optax.adamw(lr, weight_decay=o.weight_decay, mask=decay_mask)
  elif o.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
                     optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov))
  else:
    raise UserError(f"unknown optim.name {o.name!r}; use adam, adamw or sgd")
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  if "transfer" in cfg:
    from imgrec import transfer
    tx = transfer.wrap_optimizer(cfg.transfer, tx)  # regex freeze and layer-wise LR multipliers
  return tx, lr
