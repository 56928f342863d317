"""FSDP: on 8 fake devices the sharded step equals the data-parallel one, the state really is
sharded (and stays so across steps), and a run written with FSDP restores on 1 device."""
import numpy as np

from tests.helpers import run_python

FSDP_VS_DP = r"""
import sys, jax, numpy as np
from imgrec import parallel, workdir as wd
from imgrec.tasks import classification
from imgrec.data import sources
from tests.conftest import tiny_config
assert jax.device_count() == 8
# EMA on, so that ema_params are sharded and compared too; min size 0 so that every divisible array shards.
cfg = tiny_config(optim__ema_decay=0.9, parallel__fsdp_min_size=0)
ds = sources.load(cfg.data)
info = wd.data_info(cfg, ds)
mesh = parallel.make_mesh()
batch_sharding = parallel.batch_sharding(mesh)
results = []
for fsdp in (False, True):
  built = wd.build(cfg, info, mesh, fsdp=fsdp)
  model, tx, init, shardings = built.model, built.tx, built.init, built.shardings
  state = jax.jit(init, out_shardings=shardings)()
  step = jax.jit(classification.make_train_step(model, tx, info, cfg),
                 in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None), donate_argnums=(0,))
  for i in range(4):
    images, labels = ds.split("train").get(np.arange(32 * i, 32 * i + 32))
    state, metrics = step(state, jax.device_put({"image": images, "label": labels}, batch_sharding))
  if fsdp:
    kernel = state.params["conv0_0"]["kernel"]  # (3, 3, 1, 8): split on its last axis, 1 output channel per device
    assert kernel.sharding.spec == jax.P(None, None, None, "data"), kernel.sharding
    assert {s.data.shape for s in kernel.addressable_shards} == {(3, 3, 1, 1)}
    arrays = [x for x in jax.tree.leaves((state.params, state.opt_state, state.ema_params)) if x.ndim]
    whole = [x.shape for x in arrays if x.addressable_shards[0].data.shape == x.shape]
    print("SHARDED", len(arrays) - len(whole), "of", len(arrays), "whole:", whole)
    # params, Adam's mu and nu, EMA: all sharded but the head bias (10 classes do not split over 8)
    assert whole == [(10,)] * 4 and len(arrays) == 4 * len(jax.tree.leaves(state.params)), whole
    assert state.step.sharding.is_fully_replicated
  else:
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state))
  results.append(jax.device_get((state.params, state.batch_stats, state.ema_params, metrics["loss"])))
flat_dp, flat_fsdp = (jax.tree.leaves(r) for r in results)
err = max(float(np.max(np.abs(a - b))) for a, b in zip(flat_dp, flat_fsdp))
print("MAXERR", err)
assert err < 1e-5, err
assert any(np.abs(b).sum() > 0 for b in jax.tree.leaves(results[0][1]))

# The FSDP state checkpointed as `imgrec train` does (sharded); the parent restores it on 1 device.
import json
from imgrec import checkpoint, config as config_lib
workdir = sys.argv[1]
cfg.parallel.fsdp = True
config_lib.save(cfg, workdir + "/config.json")
json.dump(info, open(workdir + "/dataset.json", "w"))
mngr = checkpoint.manager(workdir)
checkpoint.save(mngr, 4, state)
mngr.wait_until_finished()
np.savez(workdir + "/params8.npz", *[np.asarray(x) for x in jax.tree.leaves(state.params)])
"""


def test_fsdp_equals_data_parallel_and_restores_on_one_device(tmp_path):
  import jax
  from imgrec import workdir as wd
  out = run_python(FSDP_VS_DP.replace("sys.argv[1]", repr(str(tmp_path))), devices=8).stdout
  assert "MAXERR" in out and "SHARDED" in out
  cfg, _, _, state = wd.restore(str(tmp_path))
  assert cfg.parallel.fsdp and jax.device_count() == 1 and int(state.step) == 4
  saved = np.load(tmp_path / "params8.npz")
  leaves = jax.tree.leaves(state.params)
  assert len(leaves) == len(saved.files)
  for i, leaf in enumerate(leaves):
    assert leaf.sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(leaf), saved[f"arr_{i}"])


def test_fsdp_spec():
  from imgrec.parallel import fsdp_spec
  P = __import__("jax").P
  assert fsdp_spec((3, 3, 64, 128), 8, 0) == P(None, None, None, "data")  # largest divisible
  assert fsdp_spec((3, 3, 64, 10), 8, 0) == P(None, None, "data", None)
  assert fsdp_spec((10,), 8, 0) == P()          # indivisible: replicated
  assert fsdp_spec((512, 512), 8, 1 << 20) == P()  # small: replicated
  assert fsdp_spec((), 8, 0) == P()
  assert fsdp_spec((64, 128), 1, 0) == P()      # one device: nothing to shard
