"""Evaluation of a trained workdir."""
import jax

from imgrec import parallel, train
from imgrec.data import sources


def evaluate_workdir(workdir, split=None, batch_size=None):
  """Accuracy and loss of the workdir's latest checkpoint on a split (default: the config's eval split)."""
  cfg, info, model, state = train.restore(workdir)
  split = split or cfg.data.eval_split
  mesh = parallel.make_mesh()
  batch_size = batch_size or cfg.batch_size
  parallel.check_batch(batch_size)
  ds = sources.load(cfg.data)
  eval_step = jax.jit(train.make_eval_step(model, info["mean"], info["std"]))
  result = train.evaluate(eval_step, state, ds.split(split), batch_size, parallel.batch_sharding(mesh), cfg.data.prefetch)
  return {"split": split, **result, "step": int(state.step)}
