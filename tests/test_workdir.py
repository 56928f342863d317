"""A run on disk: restoring with and without the optimiser state, writing a workdir, params by name."""
import jax
import numpy as np

from imgrec import parallel, train, workdir as wd
from tests.conftest import tiny_config


def test_params_only_restore_reads_the_same_inference_variables(tmp_path):
  cfg = tiny_config(steps=4, checkpoint_every=4, eval_every=4, optim__ema_decay=0.9)
  train.train(cfg, str(tmp_path))
  full = wd.restore(str(tmp_path))
  light = wd.restore(str(tmp_path), params_only=True)
  assert light.state.opt_state is None and full.state.opt_state is not None
  assert int(light.state.step) == int(full.state.step) == 4
  assert full.variables["params"] is full.state.ema_params  # the EMA pair is what inference uses
  for a, b in zip(jax.tree.leaves(full.variables), jax.tree.leaves(light.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The EMA differs from the raw weights after 4 steps: the comparison above is between EMA pairs.
  assert not np.allclose(np.asarray(full.state.params["head"]["kernel"]),
                         np.asarray(full.state.ema_params["head"]["kernel"]))


def test_write_and_restore_an_initial_state_from_given_weights(trained_workdir, tmp_path):
  run = wd.restore(trained_workdir, params_only=True)
  out = str(tmp_path / "copy")
  state = wd.initial_state(run.cfg, run.info, parallel.make_mesh(), run.variables["params"],
                           run.variables["batch_stats"])
  assert int(state.step) == 0 and state.opt_state is not None
  wd.write(out, run.cfg, run.info, state)
  again = wd.restore(out)
  assert int(again.state.step) == 0
  for a, b in zip(jax.tree.leaves(run.variables), jax.tree.leaves(again.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_params_npz_round_trip_keeps_bfloat16(tmp_path):
  import jax.numpy as jnp
  variables = {"params": {"conv": {"kernel": jnp.arange(6.0).reshape(2, 3).astype(jnp.bfloat16)},
                          "head": {"bias": np.ones(3, np.float32)}}}
  path = str(tmp_path / "p.npz")
  wd.save_params(path, variables)
  flat = wd.load_params(path)
  assert set(flat) == {"params/conv/kernel", "params/head/bias"} and flat["params/conv/kernel"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(wd.unflatten(flat)["params"]["conv"]["kernel"], np.float32),
                                np.arange(6.0).reshape(2, 3))
