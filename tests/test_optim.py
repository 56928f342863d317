import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgrec import config, optim, parallel, state as train_state, train, workdir as wd
from imgrec.data import sources
from imgrec.errors import UserError
from imgrec.tasks import classification
from tests.conftest import tiny_config


def _step_once(cfg, images, labels):
  ds_info = {"class_names": [str(i) for i in range(10)], "image_shape": [8, 8, 1], "mean": [0.3], "std": [0.4],
             "num_train": 1000}
  mesh = parallel.make_mesh()
  built = wd.build(cfg, ds_info, mesh)
  model, tx, init, shardings = built.model, built.tx, built.init, built.shardings
  state = jax.jit(init)()
  step = jax.jit(classification.make_train_step(model, tx, ds_info, cfg))
  state, metrics = step(state, {"image": images, "label": labels})
  return state, metrics


def test_accumulation_over_4_micro_batches_equals_one_big_step():
  ds = sources.load(config.defaults().data)
  images, labels = ds.split("train").get(np.arange(64))
  kw = dict(model__kwargs__batch_norm=False, model__kwargs__dropout=0.0, batch_size=64,
            optim__schedule="constant", optim__warmup_epochs=0.0, optim__lr=0.01)
  big, m_big = _step_once(tiny_config(**kw), images, labels)
  acc, m_acc = _step_once(tiny_config(optim__accum_steps=4, **kw), images, labels)
  for a, b in zip(jax.tree.leaves(big.params), jax.tree.leaves(acc.params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  assert float(m_big["loss"]) == pytest.approx(float(m_acc["loss"]), abs=1e-5)
  # The step really moved the params (lr > 0), so the equality above means something.
  cfg = tiny_config(**kw)
  init = jax.jit(wd.build(cfg, {"class_names": list("0123456789"), "image_shape": [8, 8, 1], "mean": [0.3],
                                   "std": [0.4], "num_train": 1000}, parallel.make_mesh()).init)()
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(big.params),
                                                               jax.tree.leaves(init.params)))
  assert moved > 1e-3


def test_ema_matches_closed_form():
  decay = 0.9
  seq = [jnp.full((3,), float(v)) for v in (1.0, -2.0, 0.5, 4.0, 3.0)]
  ema = seq[0]
  for p in seq[1:]:
    ema = optim.ema_update(ema, p, decay)
  n = len(seq) - 1
  closed = decay**n * seq[0] + sum((1 - decay) * decay**(n - k) * seq[k] for k in range(1, n + 1))
  np.testing.assert_allclose(ema, closed, rtol=1e-6)


def test_ema_decay_warms_up():
  np.testing.assert_allclose([optim.ema_decay_at(s, 0.999) for s in (0, 10, 90, 10**6)],
                             [0.1, 11 / 20, 91 / 100, 0.999], rtol=1e-6)


def test_ema_state_is_used_for_evaluation():
  cfg = tiny_config(steps=5)
  cfg.optim.ema_decay = 0.5
  ds = sources.load(cfg.data)
  images, labels = ds.split("train").get(np.arange(32))
  state, _ = _step_once(cfg, images, labels)
  assert jax.tree.leaves(state.ema_params)
  assert train_state.variables(state)["params"] is state.ema_params
  # One step from ema = params0, at the warmed-up decay min(0.5, 1/10): ema = 0.1 * p0 + 0.9 * p1.
  p0 = jax.jit(wd.build(cfg, {"class_names": list("0123456789"), "image_shape": [8, 8, 1], "mean": [0.3],
                                  "std": [0.4], "num_train": 1000}, parallel.make_mesh()).init)().params
  for e, a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(p0), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(e, 0.1 * a + 0.9 * b, atol=1e-6)
  # The BatchNorm statistics evaluated with the EMA weights are their own EMA, at the same decay.
  assert train_state.variables(state)["batch_stats"] is state.ema_batch_stats
  bs0 = jax.jit(wd.build(cfg, {"class_names": list("0123456789"), "image_shape": [8, 8, 1], "mean": [0.3],
                                   "std": [0.4], "num_train": 1000}, parallel.make_mesh()).init)().batch_stats
  moved = 0.0
  for e, a, b in zip(jax.tree.leaves(state.ema_batch_stats), jax.tree.leaves(bs0),
                     jax.tree.leaves(state.batch_stats)):
    np.testing.assert_allclose(e, 0.1 * a + 0.9 * b, atol=1e-6)
    moved = max(moved, float(np.max(np.abs(np.asarray(b) - np.asarray(a)))))
  assert moved > 1e-3  # the step did update the running statistics


def test_accumulation_updates_batch_norm_statistics_once_per_step():
  """With micro-batches, BatchNorm normalises each one by its own statistics; the running statistics move once,
  by the mean of the micro-batches' (micro-batch i holds examples i, i + accum, ...)."""
  ds = sources.load(config.defaults().data)
  images, labels = ds.split("train").get(np.arange(64))
  kw = dict(model__kwargs__dropout=0.0, optim__schedule="constant", optim__warmup_epochs=0.0)
  acc, _ = _step_once(tiny_config(optim__accum_steps=2, batch_size=64, **kw), images, labels)
  parts = [_step_once(tiny_config(batch_size=32, **kw), images[i::2], labels[i::2])[0] for i in range(2)]
  for a, p0, p1 in zip(jax.tree.leaves(acc.batch_stats), *(jax.tree.leaves(p.batch_stats) for p in parts)):
    np.testing.assert_allclose(a, (np.asarray(p0) + np.asarray(p1)) / 2, atol=1e-6)
  assert not np.allclose(*(np.asarray(jax.tree.leaves(p.batch_stats)[0]) for p in parts))  # the halves differ


def test_weight_decay_mask_excludes_biases_and_norm_scales():
  cfg = tiny_config()
  model = classification.create_model(cfg, {"class_names": list(range(10))})
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))["params"]
  paths = jax.tree.leaves(optim.param_paths(params))
  mask = jax.tree.leaves(optim.decay_mask(cfg)(params))
  decayed = sorted(p for p, m in zip(paths, mask) if m)
  assert decayed == ["conv0_0/kernel", "conv1_0/kernel", "fc/kernel", "head/kernel"]
  assert sorted(set(paths) - set(decayed)) == ["bn0_0/bias", "bn0_0/scale", "bn1_0/bias", "bn1_0/scale",
                                               "fc/bias", "head/bias"]


def test_weight_decay_really_shrinks_only_masked_params():
  import optax
  cfg = tiny_config()
  cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay = "adamw", 0.1, 0.5
  tx, _ = optim.make(cfg, 10, 10)
  params = {"conv": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  # Step 0 of the cosine schedule with warm-up has lr 0: use a constant schedule.
  cfg.optim.schedule, cfg.optim.warmup_epochs = "constant", 0.0
  tx, _ = optim.make(cfg, 10, 10)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(new["conv"]["kernel"][0, 0]) == pytest.approx(1 - 0.1 * 0.5)
  assert float(new["conv"]["bias"][0]) == 1.0


def test_freeze_regex_keeps_params_fixed():
  import optax
  cfg = tiny_config()
  cfg.optim.freeze = "^conv0"
  cfg.optim.schedule, cfg.optim.warmup_epochs = "constant", 0.0
  tx, _ = optim.make(cfg, 10, 10)
  params = {"conv0_0": {"kernel": jnp.ones((2,))}, "head": {"kernel": jnp.ones((2,))}}
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(new["conv0_0"]["kernel"][0]) == 1.0 and float(new["head"]["kernel"][0]) < 1.0


@pytest.mark.parametrize("name", ["sgd", "adam", "lamb", "lion", "rmsprop"])
def test_any_optax_optimiser_by_name(name):
  import optax
  cfg = tiny_config()
  cfg.optim.name = name
  cfg.optim.schedule, cfg.optim.warmup_epochs = "constant", 0.0  # lr > 0 at step 0
  tx, lr = optim.make(cfg, 100, 10)
  params = {"w": jnp.ones((3, 3))}
  grads = {"w": jnp.arange(9.0).reshape(3, 3) - 4}
  new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
  assert float(lr(0)) == cfg.optim.lr
  # Every weight with a gradient moved against it (the sign-based ones too).
  delta = np.asarray(new["w"] - params["w"]).ravel()
  g = np.asarray(grads["w"]).ravel()
  assert np.all(np.sign(delta[g != 0]) == -np.sign(g[g != 0])), delta


@pytest.mark.parametrize("schedule", ["cosine", "constant", "linear", "step", "onecycle"])
def test_schedules_warm_up_and_stay_bounded(schedule):
  cfg = tiny_config()
  cfg.optim.schedule, cfg.optim.lr, cfg.optim.decay_epochs = schedule, 0.1, (3.0, 6.0)
  lr = optim.schedule(cfg, 100, 10)
  values = np.array([float(lr(s)) for s in range(100)])
  assert values.max() <= 0.1 + 1e-6 and values.min() >= 0
  assert values[0] < values[10]  # warm-up (1 epoch by default)
  if schedule == "step":
    assert values[35] == pytest.approx(0.01) and values[65] == pytest.approx(0.001)


def test_bad_optimiser_settings_are_clear_errors():
  cfg = tiny_config()
  cfg.optim.name = "adamm"
  with pytest.raises(UserError, match="unknown optim.name 'adamm'"):
    optim.make(cfg, 10, 10)
  cfg.optim.name = "adam"
  cfg.optim.kwargs.bogus = 1
  with pytest.raises(UserError, match="bad optim.kwargs"):
    optim.make(cfg, 10, 10)


def test_validation_split_selects_best_and_never_uses_test(tmp_path):
  import json
  cfg = tiny_config(steps=60, eval_every=20)
  cfg.data.val_fraction = 0.2
  train.train(cfg, str(tmp_path))
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert {r["split"] for r in records} == {"train", "val"}  # no test evaluation during training
  assert (tmp_path / "best").is_dir()
  vals = [r for r in records if r["split"] == "val"]
  best_step = max(vals, key=lambda r: r["accuracy"])["step"]
  assert [int(d) for d in __import__("os").listdir(tmp_path / "best") if d.isdigit()] == [best_step]
