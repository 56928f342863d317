"""Global magnitude pruning of a trained run, fine-tuned by the ordinary trainer.

`prepare(W, out, sparsity, steps)` writes a new workdir `out` whose config is W's with
`optim.prune_sparsity` set (the pruning is an optimiser transformation, imgrec/optim.py), a short
fine-tuning budget (lr x `lr_scale`, no warm-up, no EMA: the EMA of dense weights would not be
sparse) and a step-0 checkpoint holding W's weights. Training `out` then prunes while it
fine-tunes, with W's own recipe (augmentation, smoothing, ...), and leaves a normal workdir.
"""
import jax
import numpy as np

from imgrec import optim, parallel, workdir as wd
from imgrec.errors import UserError


def sparsity_of(params):
  """The fraction of zeros over the prunable tensors (kernels)."""
  which = optim.prunable(params)
  leaves = [np.asarray(p) for p, w in zip(jax.tree.leaves(params), jax.tree.leaves(which)) if w]
  return float(sum((p == 0).sum() for p in leaves) / sum(p.size for p in leaves))


def prepare(source, out, sparsity, steps, lr_scale=0.3, every=10):
  """Writes the workdir `out` that fine-tunes `source`'s model `steps` steps while pruning it to `sparsity`;
  returns its config, for the trainer."""
  if not 0 < sparsity < 1:
    raise UserError(f"sparsity must be in (0, 1), got {sparsity}")
  if steps < 1:
    raise UserError(f"magnitude pruning happens while fine-tuning: give --steps >= 1, got {steps}")
  run = wd.restore(source, params_only=True)
  cfg = run.cfg.copy_and_resolve_references()
  cfg.steps, cfg.epochs = int(steps), 0.0
  cfg.optim.lr *= lr_scale
  cfg.optim.warmup_epochs, cfg.optim.warmup_steps = 0.0, 0
  cfg.optim.ema_decay = 0.0
  cfg.optim.prune_sparsity, cfg.optim.prune_every = float(sparsity), int(every)
  cfg.transfer.init_from, cfg.distill.teacher = "", ""
  cfg.eval_every = cfg.checkpoint_every = int(steps)
  cfg.keep_checkpoints = 1
  v = run.variables
  state = wd.initial_state(cfg, run.info, parallel.make_mesh(), v["params"], v.get("batch_stats", {}))
  wd.write(out, cfg, run.info, state)
  return cfg
