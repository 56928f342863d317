"""`imgrec export`: the artifact, loaded in a fresh process without imgrec, gives the same logits."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from imgrec import export, state as train_state, tasks, workdir as wd
from imgrec.data import sources
from imgrec.errors import UserError
from tests.helpers import ROOT, run_python

# Runs with only jax, numpy and the standard library: no imgrec on the path at all.
LOAD_AND_RUN = """
import json, sys, zipfile
import jax, numpy as np
assert "imgrec" not in sys.modules
with zipfile.ZipFile({path!r}) as z:
  exp = jax.export.deserialize(bytearray(z.read("predict.jaxexport")))
  meta = json.loads(z.read("meta.json"))
x = np.load({inp!r})
np.save({out!r}, np.asarray(exp.call(x)["logits"]))
np.save({out1!r}, np.asarray(exp.call(x[:3])["logits"]))  # another batch size: the batch dimension is symbolic
assert [o["name"] for o in meta["outputs"]] == sorted(exp.call(x[:1]))  # the one description
print(json.dumps(meta))
assert not any(m.startswith("imgrec") for m in sys.modules)
"""


def test_export_fresh_process_same_logits(trained_workdir, tmp_path):
  artifact = str(tmp_path / "model.zip")
  proc = subprocess.run([sys.executable, "-m", "imgrec", "export", "--workdir", trained_workdir, "--out", artifact],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "exported" in proc.stdout and os.path.getsize(artifact) > 0

  cfg, info, model, state = wd.restore(trained_workdir)
  images, _ = sources.load(cfg.data).split("test").get(np.arange(17))
  expected = np.asarray(jax.jit(export.make_predict(model, train_state.variables(state), info["mean"], info["std"],
                                                   tasks.classification))(images)["logits"])
  np.save(tmp_path / "in.npy", images)
  out, out1 = str(tmp_path / "out.npy"), str(tmp_path / "out1.npy")
  code = LOAD_AND_RUN.format(path=artifact, inp=str(tmp_path / "in.npy"), out=out, out1=out1)
  run_python(code, timeout=120)  # imgrec is importable there; the code asserts it is never imported
  got, got1 = np.load(out), np.load(out1)
  assert got.shape == (17, 10) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(got1, expected[:3], atol=1e-5, rtol=0)
  assert np.mean(np.argmax(got, -1) == np.argmax(expected, -1)) == 1.0

  predictor = export.load(artifact)  # the in-library loader used by servers
  assert predictor.class_names == info["class_names"]
  np.testing.assert_allclose(np.asarray(predictor(images)["logits"]), expected, atol=1e-5, rtol=0)
  with pytest.raises(UserError, match="expected uint8 images"):
    predictor(images.astype(np.float32))


def test_load_rejects_non_artifact(tmp_path):
  bad = tmp_path / "bad.zip"
  bad.write_bytes(b"not a zip")
  with pytest.raises(UserError, match="not an imgrec export artifact"):
    export.load(str(bad))


def test_export_for_another_platform_uses_its_ops(trained_workdir):
  """The CPU-only layer implementations are chosen for the platform lowered for, not for this host:
  exported from a CPU for cuda, every convolution and max-pool is XLA's own op."""
  cfg, info, model, state = wd.restore(trained_workdir, params_only=True)
  predict = export.make_predict(model, jax.device_get(train_state.variables(state)), info["mean"], info["std"],
                                tasks.classification)
  text = {p: export.export_predict(predict, tuple(info["image_shape"]), (p,)).mlir_module() for p in ("cuda", "cpu")}
  assert text["cuda"].count("stablehlo.convolution") == 2  # the small CNN's two convolutions
  assert "reduce_window" in text["cuda"]  # max-pool as XLA's window reduction
  # Control: lowered for CPU, the one-input-channel stem runs as multiply-adds and pooling as strided maxima.
  assert text["cpu"].count("stablehlo.convolution") == 1 and "reduce_window" not in text["cpu"]
