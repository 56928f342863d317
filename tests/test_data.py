"""Each data source on real small files, and the pipeline's order and sharding arithmetic."""
import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from imgrec import config
from imgrec.data import pipeline, sources
from imgrec.errors import UserError


def data_cfg(source, **kw):
  cfg = config.defaults().data
  cfg.source = source
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def write_idx(path, array, gz):
  codes = {np.dtype(np.uint8): 0x08}
  header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  data = header + array.tobytes()
  with (gzip.open if gz else open)(path, "wb") as f:
    f.write(data)


def test_digits_is_embedded_and_split_is_fixed():
  ds = sources.load(data_cfg("digits"))
  train, test = ds.split("train"), ds.split("test")
  assert ds.image_shape == (8, 8, 1) and ds.num_classes == 10
  assert len(train) + len(test) == 1797 and 300 < len(test) < 400
  x, y = train.get(np.arange(5))
  assert x.dtype == np.uint8 and y.dtype == np.int32 and x.max() > 200
  again = sources.load(data_cfg("digits")).split("test")
  np.testing.assert_array_equal(test.get(np.arange(len(test)))[1], again.get(np.arange(len(again)))[1])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files(tmp_path, gz):
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 50), ("t10k", 20)):
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), gz)
    write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n, dtype=np.uint8), gz)
  ds = sources.load(data_cfg(f"idx:{tmp_path}"))
  assert ds.image_shape == (28, 28, 1) and len(ds.split("train")) == 50 and len(ds.split("test")) == 20
  raw = sources.read_idx(str(tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}"))
  np.testing.assert_array_equal(ds.split("train").get([3])[0][0, ..., 0], raw[3])
  resized = sources.load(data_cfg(f"idx:{tmp_path}", image_size=32))
  assert resized.image_shape == (32, 32, 1)


def test_idx_errors(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "FASHION_MNIST_DIR", str(tmp_path / "fashion-mnist"))
  with pytest.raises(UserError, match="apt-get install -y dataset-fashion-mnist.*data.dir"):
    sources.load(data_cfg("fashion_mnist"))
  with pytest.raises(UserError, match="not found"):
    sources.load(data_cfg(f"idx:{tmp_path}/nowhere"))
  with pytest.raises(UserError, match="lacks"):
    sources.load(data_cfg(f"idx:{tmp_path}"))
  (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
  with pytest.raises(UserError, match="not an IDX file"):
    sources.read_idx(str(tmp_path / "bad"))
  write_idx(tmp_path / "short", np.zeros((4, 3), np.uint8), False)
  (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-2])
  with pytest.raises(UserError, match="truncated"):
    sources.read_idx(str(tmp_path / "short"))
  with pytest.raises(UserError, match="unknown data source"):
    sources.load(data_cfg("imagenet"))


def make_folder(root, classes=("cat", "dog", "fox"), per_class=6, size=(12, 10), mode="RGB"):
  rng = np.random.default_rng(0)
  for c in classes:
    (root / c).mkdir(parents=True)
    for i in range(per_class):
      shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
      ext = "png" if i % 2 else "jpg"
      Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i}.{ext}")


def test_image_folder_with_split_fraction(tmp_path):
  make_folder(tmp_path)
  ds = sources.load(data_cfg(f"folder:{tmp_path}", image_size=16, test_fraction=0.34))
  assert ds.class_names == ("cat", "dog", "fox") and ds.image_shape == (16, 16, 3)
  assert len(ds.split("train")) == 12 and len(ds.split("test")) == 6
  assert sorted(ds.split("test").get(np.arange(6))[1].tolist()) == [0, 0, 1, 1, 2, 2]


def test_image_folder_with_train_test_dirs_grayscale(tmp_path):
  make_folder(tmp_path / "train", mode="L", per_class=4)
  make_folder(tmp_path / "test", mode="L", per_class=2)
  ds = sources.load(data_cfg(f"folder:{tmp_path}"))
  assert ds.image_shape == (10, 12, 1) and len(ds.split("train")) == 12 and len(ds.split("test")) == 6


def test_image_folder_errors(tmp_path):
  make_folder(tmp_path, per_class=2)
  (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
  with pytest.raises(UserError, match="broken.png"):
    sources.load(data_cfg(f"folder:{tmp_path}", test_fraction=0.5))
  (tmp_path / "dog" / "broken.png").unlink()
  Image.new("RGB", (30, 30)).save(tmp_path / "cat" / "big.png")
  with pytest.raises(UserError, match="data.image_size"):
    sources.load(data_cfg(f"folder:{tmp_path}", test_fraction=0.5))
  with pytest.raises(UserError, match="not found"):
    sources.load(data_cfg(f"folder:{tmp_path}/missing"))


def test_tfds_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=24):
    ds = sources.load(data_cfg("tfds:mnist"))
    assert ds.class_names == tuple(str(i) for i in range(10)) and ds.image_shape == (28, 28, 1)
    x, y = ds.split("train").get(np.arange(8))
    assert x.shape == (8, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int32
    assert len(ds.split("test")) == 24


def test_pipeline_order_is_a_function_of_seed_and_step():
  full = list(pipeline.train_indices(100, 10, seed=3, start_step=0, end_step=25))
  resumed = list(pipeline.train_indices(100, 10, seed=3, start_step=13, end_step=25))
  assert [s for s, _ in resumed] == list(range(13, 25))
  for (s1, a), (s2, b) in zip(full[13:], resumed):
    np.testing.assert_array_equal(a, b)
  epoch0 = np.concatenate([idx for _, idx in full[:10]])
  assert sorted(epoch0.tolist()) == list(range(100))  # each example once per epoch
  assert not np.array_equal(full[0][1], full[10][1])  # reshuffled next epoch
  other = list(pipeline.train_indices(100, 10, seed=4, start_step=0, end_step=1))
  assert not np.array_equal(full[0][1], other[0][1])


def test_eval_indices_cover_everything_once():
  seen = []
  for idx, mask in pipeline.eval_indices(23, 8):
    assert len(idx) == 8
    seen += idx[mask].tolist()
  assert seen == list(range(23))


def test_prefetch_reraises_errors():
  def gen():
    yield 1
    raise RuntimeError("boom")
  it = pipeline.prefetch(gen(), 2)
  assert next(it) == 1
  with pytest.raises(RuntimeError, match="boom"):
    next(it)
