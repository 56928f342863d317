"""Transfer: init_from by name with a table, new head, regex freeze, class subsets, k-shot fine-tuning."""
import numpy as np
import pytest

from imgrec import train, transfer, workdir as wd
from imgrec.data import sources
from imgrec.errors import UserError
from tests.conftest import tiny_config


def test_merge_reports_every_status():
  target = {"params/conv/kernel": np.zeros((3, 3, 1, 8)), "params/head/kernel": np.zeros((8, 5)),
            "params/fc/bias": np.zeros(4), "params/new/bias": np.zeros(2)}
  source = {"params/conv/kernel": np.ones((3, 3, 1, 8)), "params/head/kernel": np.ones((8, 10)),
            "params/fc/bias": np.ones(3), "params/old/bias": np.ones(7)}
  merged, rows = transfer.merge(target, source, reinit="")
  status = {name: s for name, s, _, _ in rows}
  assert status == {"params/conv/kernel": "loaded", "params/head/kernel": "wrong shape",
                    "params/fc/bias": "wrong shape", "params/new/bias": "missing", "params/old/bias": "unexpected"}
  assert merged["params/conv/kernel"].sum() == 72 and merged["params/head/kernel"].sum() == 0
  merged, rows = transfer.merge(target, source, reinit="(^|/)conv/")
  assert dict((n, s) for n, s, _, _ in rows)["params/conv/kernel"] == "re-initialised"
  assert merged["params/conv/kernel"].sum() == 0
  table = transfer.format_table(rows)
  assert "wrong shape" in table and "(8, 10) -> (8, 5)" in table


def test_merge_resizes_vit_position_embedding():
  from imgrec.models import vit
  src = np.random.default_rng(0).normal(size=(1, 17, 4)).astype(np.float32)  # class token + 4x4 grid
  target = {"params/pos_embedding": np.zeros((1, 65, 4), np.float32),        # class token + 8x8 grid
            "params/gap/pos_embedding": np.zeros((1, 64, 4), np.float32),    # pool="gap": no class token
            "params/wide/pos_embedding": np.zeros((1, 65, 8), np.float32)}   # other width: not resizable
  source = {"params/pos_embedding": src, "params/gap/pos_embedding": src[:, 1:], "params/wide/pos_embedding": src}
  merged, rows = transfer.merge(target, source)
  assert {n: s for n, s, _, _ in rows} == {"params/pos_embedding": "resized", "params/gap/pos_embedding": "resized",
                                           "params/wide/pos_embedding": "wrong shape"}
  np.testing.assert_allclose(merged["params/pos_embedding"], vit.resize_grid(src, 1, 8, 8), atol=1e-6)
  assert merged["params/pos_embedding"][0, 0].tolist() == src[0, 0].tolist()  # class token unchanged
  np.testing.assert_allclose(merged["params/gap/pos_embedding"], merged["params/pos_embedding"][:, 1:], atol=1e-6)
  assert "(1, 17, 4) -> (1, 65, 4)" in transfer.format_table(rows)


def test_class_subset_and_k_shot():
  cfg = tiny_config().data
  cfg.classes = (7, 2)
  cfg.train_per_class = 5
  ds = sources.load(cfg)
  assert ds.class_names == ("7", "2")
  train_split, test_split = ds.split("train"), ds.split("test")
  assert len(train_split) == 10 and sorted(np.bincount(train_split.labels)) == [5, 5]
  full = sources.load(tiny_config().data).split("test")
  assert len(test_split) == np.sum(np.isin(full.labels, [7, 2]))
  # relabelled in the order given: 7 -> 0, 2 -> 1; images unchanged
  np.testing.assert_array_equal(test_split.images, full.images[np.isin(full.labels, [7, 2])])
  np.testing.assert_array_equal(test_split.labels, np.where(full.labels[np.isin(full.labels, [7, 2])] == 7, 0, 1))
  cfg.train_per_class = 1000
  with pytest.raises(UserError, match="train_per_class"):
    sources.load(cfg)


def test_init_from_new_head_and_freeze(trained_workdir, tmp_path, capsys):
  """Fine-tunes the 10-class digits run on 3 classes with the convolutions frozen."""
  _, _, _, source = wd.restore(trained_workdir)
  cfg = tiny_config(steps=6, eval_every=6, checkpoint_every=6)
  cfg.data.classes = (0, 1, 2)
  cfg.transfer.init_from = trained_workdir
  cfg.optim.freeze = "^conv"
  state, _ = train.train(cfg, str(tmp_path / "ft"))
  out = capsys.readouterr().out
  assert "re-initialised   params/head/kernel (32, 3)" in out
  p, s = state.params, source.params
  for name in ("conv0_0", "conv1_0"):  # frozen: bit-identical to the source
    np.testing.assert_array_equal(np.asarray(p[name]["kernel"]), np.asarray(s[name]["kernel"]))
  assert not np.allclose(np.asarray(p["fc"]["kernel"]), np.asarray(s["fc"]["kernel"]))  # loaded, then trained
  assert p["head"]["kernel"].shape == (32, 3)


def test_init_from_bad_paths(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    transfer.load_source(str(tmp_path / "nope"))
  (tmp_path / "bad.npz").write_bytes(b"junk")
  with pytest.raises(UserError, match="not a readable params"):
    transfer.load_source(str(tmp_path / "bad.npz"))


def test_linear_probe_k_shot(trained_workdir):
  full = transfer.linear_probe(trained_workdir)
  few = transfer.linear_probe(trained_workdir, train_per_class=5)
  assert few["train_examples"] == 50 and full["train_examples"] > 1000 and full["classes"] == 10
  assert full["accuracy"] > 0.6 and full["accuracy"] >= few["accuracy"] - 0.05, (full, few)
  assert few["accuracy"] > 0.3  # 5 examples per class on frozen features; chance is 0.1
