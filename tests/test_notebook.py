"""The quickstart notebook runs end to end (the Colab path) on a few training steps."""
import os

import pytest

from tests.helpers import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  # The kernel is a subprocess: it inherits these.
  monkeypatch.setenv("IMGREC_NB_STEPS", "20")
  monkeypatch.setenv("IMGREC_NB_WORKDIR", str(workdir))
  monkeypatch.setenv("IMGREC_NB_EXPLAIN", "1")
  monkeypatch.setenv("IMGREC_NB_IG_STEPS", "8")
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  nb = nbformat.read(os.path.join(ROOT, "scripts", "notebooks", "quickstart.ipynb"), as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  pngs = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(pngs) == 1 + 4 + 2  # curves, 4 report plots, 1 explanation + filters
  for name in ("metrics.json", "report.md", "confusion.png"):
    assert (workdir / "report" / name).exists()
  assert len(list((workdir / "explain").glob("*.png"))) == 2
