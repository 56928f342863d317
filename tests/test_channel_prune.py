"""Structured channel pruning: exact slicing, a genuinely smaller network, a loadable workdir."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgrec import cli, compress, models, state as train_state, workdir as wd
from imgrec.compress import channels
from imgrec.errors import UserError
from imgrec.models import profile, resnet


def _random_variables(model, shape, rng):
  """Variables from numpy (no compiled `init`: XLA:CPU takes tens of seconds on its random initialisers)."""
  def fill(path, a):
    if getattr(path[-1], "key", None) == "var":
      return rng.uniform(0.5, 2.0, size=a.shape).astype(a.dtype)
    fan_in = int(np.prod(a.shape[:-1])) if len(a.shape) > 1 else 1
    return (rng.normal(size=a.shape) / np.sqrt(fan_in)).astype(a.dtype)
  return jax.tree_util.tree_map_with_path(fill, profile.abstract_variables(model, shape))


def _with_dead_channels(model, variables, sparsity, rng):
  """In every prunable conv, the channels that pruning at `sparsity` removes are made dead:
  kernel, BN scale and BN shift zero, so that they output exactly 0."""
  flat = {k: np.array(v) for k, v in wd.flatten(variables).items()}
  dead = {}
  for g in channels.groups(model)[0]:
    n = flat[f"params/{g.conv}/kernel"].shape[-1]
    dead[g.conv] = rng.choice(n, n - channels.keep_count(n, sparsity), replace=False)
    flat[f"params/{g.conv}/kernel"][..., dead[g.conv]] = 0
    if g.norm:
      flat[f"params/{g.norm}/scale"][dead[g.conv]] = 0
      flat[f"params/{g.norm}/bias"][dead[g.conv]] = 0
  return wd.unflatten(flat), dead


@pytest.mark.parametrize("name", ["small_cnn", "basic", "bottleneck", "preact_bottleneck"])
def test_slicing_dead_channels_is_exact_and_shrinks(name):
  if name == "small_cnn":
    model, shape = models.create("small_cnn", 5, widths=(8, 16), convs_per_stage=2, hidden=16), (8, 8, 1)
  else:
    model, shape = resnet.ResNet(num_classes=5, stage_sizes=(1, 1), block=name, width=8, stem="cifar"), (8, 8, 3)
  variables = _random_variables(model, shape, np.random.default_rng(1))
  live = channels.prune(model, variables, 0.5)[0]  # control: the same shapes, live channels removed
  variables, dead = _with_dead_channels(model, variables, 0.5, np.random.default_rng(0))
  pruned, kwargs, rows = channels.prune(model, variables, 0.5)
  small = model.clone(**kwargs)
  assert [b - a for _, b, a in rows] == [len(d) for d in dead.values()]
  x = jax.random.normal(jax.random.key(1), (4, *shape))
  # One compile per network, for its logits and its XLA FLOPs (cost analysis of the compiled forward).
  big_fn = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile()
  small_fn = jax.jit(lambda v, x: small.apply(v, x)).lower(pruned, x).compile()
  big_logits, small_logits = big_fn(variables, x), small_fn(pruned, x)
  assert float(jnp.max(jnp.abs(big_logits))) > 0.05  # a non-trivial function
  np.testing.assert_allclose(np.asarray(small_logits), np.asarray(big_logits), atol=1e-5)
  assert float(jnp.max(jnp.abs(small_fn(live, x) - big_logits))) > 1e-3  # the check can fail
  assert profile.count_params(pruned["params"]) < 0.8 * profile.count_params(variables["params"])
  flops = lambda fn: fn.cost_analysis()["flops"]
  assert flops(small_fn) < 0.8 * flops(big_fn), (flops(small_fn), flops(big_fn))

def test_resnet_keeps_residual_stream():
  model = models.create("resnet18", 10, width=8, stem="cifar")
  variables = _random_variables(model, (8, 8, 1), np.random.default_rng(0))
  pruned, kwargs, rows = channels.prune(model, variables, 0.5)
  assert kwargs == {"inner_widths": (4, 4, 8, 8, 16, 16, 32, 32)}  # conv1 of each of the 8 basic blocks
  p, q = variables["params"], pruned["params"]
  for block in ("stage1_block1", "stage2_block1", "stage4_block2"):
    assert q[block]["conv2"]["kernel"].shape[2:] == (p[block]["conv2"]["kernel"].shape[2] // 2,
                                                     p[block]["conv2"]["kernel"].shape[3])  # out: stream width
  assert q["stage2_block1"]["proj_conv"]["kernel"].shape == p["stage2_block1"]["proj_conv"]["kernel"].shape
  assert q["stem_conv"]["kernel"].shape == p["stem_conv"]["kernel"].shape


def test_bad_requests():
  with pytest.raises(UserError, match="small_cnn and the ResNet family"):
    channels.groups(models.create("lenet5", 10))
  model = models.create("small_cnn", 10, widths=(4,), hidden=8)
  variables = profile.abstract_variables(model, (8, 8, 1))
  with pytest.raises(UserError, match=r"in \[0, 1\)"):
    channels.prune(model, variables, 1.0)
  with pytest.raises(UserError, match="criterion"):
    channels.prune(model, jax.tree.map(lambda a: np.ones(a.shape, a.dtype), variables), 0.5, "l2")


def test_workdir_restores_and_fine_tunes(trained_workdir, tmp_path, capsys):
  cfg, info, model, state = wd.restore(trained_workdir)
  variables = jax.device_get(train_state.variables(state))
  # No fine-tuning: the workdir holds exactly the sliced network, in a smaller model from config.json.
  out = str(tmp_path / "pruned0")
  _, r = channels.prepare(trained_workdir, out, 0.5, steps=0)
  pcfg, _, small, small_state = wd.restore(out)
  assert tuple(pcfg.model.kwargs.conv_widths) == (4, 8) and r["params_after"] < r["params_before"]
  expected, kwargs, _ = channels.prune(model, variables, 0.5)
  x = jax.random.normal(jax.random.key(0), (8, *info["image_shape"]))
  np.testing.assert_allclose(np.asarray(small.apply(train_state.variables(small_state), x)),
                             np.asarray(model.clone(**kwargs).apply(expected, x)), atol=1e-6)
  before = compress.accuracy(compress.correct_fn(small, info["mean"], info["std"]), train_state.variables(small_state),
                            _test_split(cfg))
  # The CLI: prune and fine-tune into a normal workdir (restored by workdir.restore, as eval/serve/export do).
  out = str(tmp_path / "pruned")
  assert cli.main(["compress", "--workdir", trained_workdir, "--method", "channels", "--sparsity", "0.5",
                   "--steps", "30", "--out", out]) == 0
  printed = capsys.readouterr().out
  assert "channels: accuracy" in printed and os.path.isfile(os.path.join(out, "params.npz"))
  _, _, tuned_model, tuned = wd.restore(out)
  assert int(tuned.step) == 30 and profile.count_params(tuned.params) == r["params_after"]
  after = compress.accuracy(compress.correct_fn(tuned_model, info["mean"], info["std"]), train_state.variables(tuned),
                           _test_split(cfg))
  assert after > max(before, 0.3), (before, after)  # fine-tuning recovers; chance is 0.1


def _test_split(cfg):
  from imgrec.data import sources
  return sources.load(cfg.data).split(cfg.data.eval_split)
