"""Sharding: 8 fake devices give the same step as 1; 2 processes give the same run as 1."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.helpers import ROOT, run_python

EIGHT_VS_ONE = r"""
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from imgrec import steps, train, workdir as wd
from imgrec.errors import UserError
from imgrec.data import sources
from tests.conftest import tiny_config
assert jax.device_count() == 8
cfg = tiny_config()
ds = sources.load(cfg.data)
info = wd.data_info(cfg, ds)
images, labels = ds.split("train").get(np.arange(32))
results = []
for devices in (jax.devices()[:1], jax.devices()):
  mesh = Mesh(np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  model, tx, _, init, _, shardings = wd.build(cfg, info, mesh)
  state = jax.jit(init, out_shardings=shardings)()
  batch_sharding = NamedSharding(mesh, P("data"))
  step = jax.jit(steps.make_train_step(model, tx, info["mean"], info["std"], cfg),
                 in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None))
  batch = jax.device_put({"image": images, "label": labels}, batch_sharding)
  assert len(batch["image"].sharding.device_set) == len(devices)
  for _ in range(3):
    state, metrics = step(state, batch)
  results.append(jax.device_get((state.params, state.batch_stats, metrics["loss"])))
flat1, flat8 = (jax.tree.leaves(r) for r in results)
err = max(float(np.max(np.abs(a - b))) for a, b in zip(flat1, flat8))
print("MAXERR", err)
assert err < 1e-5, err
bs1 = jax.tree.leaves(results[0][1])
assert any(np.abs(b).sum() > 0 for b in bs1)
try:
  train.train(tiny_config(batch_size=36), "/tmp/never")
  raise SystemExit("no error for batch 36 on 8 devices")
except UserError as e:
  assert "not divisible by the 8 devices" in str(e), e
  print("ERR", e)
"""


def test_eight_devices_equal_one_device():
  out = run_python(EIGHT_VS_ONE, devices=8).stdout
  assert "MAXERR" in out and "not divisible" in out


WRITE_ON_8 = r"""
import sys, jax, numpy as np
from imgrec import train
from tests.conftest import tiny_config
state, _ = train.train(tiny_config(steps=10, checkpoint_every=10, eval_every=10), sys.argv[1] if len(sys.argv) > 1 else "{workdir}")
np.savez("{workdir}/params8.npz", *[np.asarray(x) for x in jax.tree.leaves(state.params)])
"""


def test_checkpoint_from_8_devices_restores_on_1(tmp_path):
  import jax
  from imgrec import workdir as wd
  run_python(WRITE_ON_8.format(workdir=tmp_path), devices=8)
  _, _, _, state = wd.restore(str(tmp_path))
  assert jax.device_count() == 1 and int(state.step) == 10
  saved = np.load(tmp_path / "params8.npz")
  leaves = jax.tree.leaves(state.params)
  assert len(leaves) == len(saved.files)
  for i, leaf in enumerate(leaves):
    np.testing.assert_array_equal(np.asarray(leaf), saved[f"arr_{i}"])


TWO_PROCESS = r"""
import sys, jax, numpy as np
from imgrec import train
from tests.conftest import tiny_config
pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg = tiny_config(steps=12, checkpoint_every=12, eval_every=12)
if pid >= 0:
  cfg.parallel.coordinator_address = f"127.0.0.1:{port}"
  cfg.parallel.num_processes = 2
  cfg.parallel.process_id = pid
state, result = train.train(cfg, workdir)
assert jax.process_count() == (2 if pid >= 0 else 1)
params = [np.asarray(jax.device_get(x.addressable_data(0))) for x in jax.tree.leaves(state.params)]
np.savez(f"{workdir}/params_{pid}.npz", *params)
print("RESULT", result)
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  port = str(_free_port())
  multi, single = tmp_path / "multi", tmp_path / "single"
  procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS, str(pid), port, str(multi)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  run_python(TWO_PROCESS.replace("sys.argv[1]", "'-1'").replace("sys.argv[2]", "'0'").replace(
      "sys.argv[3]", repr(str(single))))
  p0, p1, p_single = (np.load(d / f"params_{i}.npz") for d, i in ((multi, 0), (multi, 1), (single, -1)))
  assert len(p0.files) == len(p_single.files) > 0
  for k in p0.files:
    np.testing.assert_array_equal(p0[k], p1[k])  # replicas agree across processes
    np.testing.assert_allclose(p0[k], p_single[k], atol=1e-5)
