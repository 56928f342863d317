"""Sharding: 8 fake devices give the same step as 1; 2 processes give the same run as 1."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgrec.data import pipeline
from tests.helpers import ROOT, photo_folder, run_python

EIGHT_VS_ONE = r"""
import sys, jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from imgrec import steps, train, workdir as wd
from imgrec.tasks import classification
from imgrec.errors import UserError
from imgrec.data import pipeline, sources
from tests.conftest import tiny_config
assert jax.device_count() == 8
cfg = tiny_config()
if len(sys.argv) > 1:  # an image folder through the Grain pipeline (host crops in 2 workers)
  cfg.data.source, cfg.data.image_size, cfg.data.test_fraction = "folder:" + sys.argv[1], 12, 0.2
ds = sources.load(cfg.data)
info = wd.data_info(cfg, ds)
images, labels = ds.split("train").get(np.arange(32))
results = []
for devices in (jax.devices()[:1], jax.devices()):
  mesh = Mesh(np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  built = wd.build(cfg, info, mesh)
  model, tx, init, shardings = built.model, built.tx, built.init, built.shardings
  state = jax.jit(init, out_shardings=shardings)()
  batch_sharding = NamedSharding(mesh, P("data"))
  step = jax.jit(classification.make_train_step(model, tx, info, cfg),
                 in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None))
  if len(sys.argv) > 1:
    batches = [b for _, b in pipeline.train_batches(ds.split("train"), 32, 0, 0, 3, batch_sharding, 2, workers=2)]
  else:
    batches = [jax.device_put({"image": images, "label": labels}, batch_sharding)] * 3
  assert len(batches[0]["image"].sharding.device_set) == len(devices)
  losses = []
  for batch in batches:
    state, metrics = step(state, batch)
    losses.append(metrics["loss"])
  results.append(jax.device_get((state.params, state.batch_stats, metrics["loss"])))
  results[-1] += (jax.device_get(losses), jax.device_get([b["image"] for b in batches]))
for a, b in zip(results[0][-1], results[1][-1]):
  np.testing.assert_array_equal(a, b)  # the same batches, however many devices they are spread over
flat1, flat8 = (jax.tree.leaves(r[:3]) for r in results)
err = max(float(np.max(np.abs(a - b))) for a, b in zip(flat1, flat8))
print("MAXERR", err)
if len(sys.argv) > 1:
  # Noise images give biases ahead of BatchNorm gradients of ~0, all rounding noise, which Adam
  # magnifies in later steps: the first step's loss is the comparable figure.
  np.testing.assert_allclose(results[0][3][0], results[1][3][0], rtol=1e-6)
else:
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


@pytest.mark.slow
def test_eight_devices_equal_one_device_on_grain_batches(tmp_path):
  photo_folder(tmp_path, n=48, classes=4, size=(16, 48), seed=1)
  script = EIGHT_VS_ONE.replace("tiny_config()", "tiny_config(batch_size=32)")
  out = run_python(script.replace("sys.argv[1]", repr(str(tmp_path))).replace(
      "len(sys.argv) > 1", "True"), devices=8).stdout
  assert "MAXERR" in out


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


@pytest.mark.slow
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


DISJOINT = r"""
import json, sys, jax, numpy as np
from imgrec import config, parallel
from imgrec.data import pipeline, sources
pid, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
cfg = config.defaults().data
cfg.source, cfg.pp_train, cfg.pp_eval, cfg.test_fraction = "folder:" + root, "decode", "decode", 0.25
split = sources.load(cfg).split("train")
sharding = parallel.batch_sharding(parallel.make_mesh())
seen = {}
for step, batch in pipeline.train_batches(split, 8, 3, 0, 4, sharding, 2, workers=1):
  local = np.asarray(batch["image"].addressable_data(0))
  seen[step] = [int(v) for v in local[:, 0, 0, 0]]  # each file's pixels hold its number
ids = {i: int(split.describe(i).rsplit("/", 1)[1].split(".")[0]) for i in range(len(split))}
print("SEEN", json.dumps({"seen": seen, "ids": ids}))
"""


@pytest.mark.slow
def test_two_processes_read_disjoint_slices_of_the_global_batch(tmp_path):
  for i in range(40):  # 8x8 grey PNGs filled with their number: a batch shows which examples it holds
    (tmp_path / f"c{i % 4}").mkdir(exist_ok=True)
    Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / f"c{i % 4}" / f"{i}.png")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, "-c", DISJOINT, str(pid), port, str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  results = [json.loads(out.split("SEEN ", 1)[1]) for out, _ in outs]
  ids = {int(k): v for k, v in results[0]["ids"].items()}
  for step, idx in pipeline.train_indices(len(ids), 8, 3, 0, 4):
    first, second = results[0]["seen"][str(step)], results[1]["seen"][str(step)]
    assert len(first) == len(second) == 4 and not set(first) & set(second)
    assert first + second == [ids[int(i)] for i in idx]  # process 0 the first half, process 1 the second


STREAM_SUMS = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh
from imgrec import steps
from imgrec.data import sources
from tests.conftest import tiny_config
assert jax.device_count() == 8
split = sources.load(tiny_config().data).split("test")  # 359 examples: the last batch of 64 is padded

def fn(variables, batch):  # a task that reduces as it goes: a masked histogram, beside per-example outputs
  keep = batch["mask"].astype(jnp.int32)
  hist = jnp.zeros(10, jnp.int32).at[batch["label"]].add(keep)
  return {"label": batch["label"], "sums": {"hist": hist, "pixels": jnp.sum(batch["image"].sum((1, 2, 3)) * keep)}}

got = [steps.stream(fn, {}, split, 64, Mesh(np.array(d), ("data",))) for d in (jax.devices()[:1], jax.devices())]
labels = split.labels
for out in got:
  np.testing.assert_array_equal(out["label"], labels)  # per-example outputs: gathered in order, padding dropped
  np.testing.assert_array_equal(out["sums"]["hist"], np.bincount(labels, minlength=10))  # padding masked out
  assert int(out["sums"]["pixels"]) == int(split.get(np.arange(len(split)))[0].astype(np.int64).sum())
print("SUMS OK", got[1]["sums"]["hist"].tolist())
"""


def test_evaluation_sums_accumulate_alike_on_eight_devices():
  """steps.stream adds an eval fn's "sums" up over the batches on device (a confusion matrix in segmentation):
  on 8 devices as on 1, with the padded last batch masked out, beside the gathered per-example outputs."""
  assert "SUMS OK" in run_python(STREAM_SUMS, devices=8).stdout
