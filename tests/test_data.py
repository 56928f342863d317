"""Each data source on real small files, and the pipeline's order and sharding arithmetic."""
import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from imgrec import config, parallel
from imgrec.data import pipeline, sources, splits
from imgrec.errors import UserError
from tests.helpers import photo_folder


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


def test_folder_of_mixed_images_is_an_index_decoded_to_the_configured_size(tmp_path, monkeypatch):
  made = photo_folder(tmp_path, n=18, size=(20, 70))
  opened = []
  real = sources.preprocess.header
  monkeypatch.setattr(sources.preprocess, "header", lambda data: opened.append(1) or real(data))
  ds = sources.load(data_cfg(f"folder:{tmp_path}", image_size=24, test_fraction=0.34))
  assert len(opened) == len(made) <= sources.HEADER_SAMPLE  # only the header sample is opened at start-up
  # Mixed sizes are photos: the ImageNet recipe at the configured crop; mixed grey/colour -> 3 channels.
  assert ds.image_shape == (24, 24, 3) and ds.pp_eval == "decode|resize_small(27)|central_crop(24)"
  assert ds.pp_train == "decode|random_resized_crop(24)|flip"
  train, test = ds.split("train"), ds.split("test")
  assert len(train) == 12 and len(test) == 6 and sorted(test.labels.tolist()) == [0, 0, 1, 1, 2, 2]
  x, y = test.get(np.arange(6))
  assert x.shape == (6, 24, 24, 3) and x.dtype == np.uint8 and y.tolist() == test.labels.tolist()
  gray = [k for k in range(6) if made[test.describe(k)][2] == "L"]
  assert gray and all((x[k, ..., 0] == x[k, ..., 2]).all() for k in gray)  # grey images broadcast to RGB
  # Eval is deterministic; each training draw differs.
  np.testing.assert_array_equal(test.get(np.arange(6))[0], x)
  a = train.example(0, True, np.random.default_rng(1))["image"]
  b = train.example(0, True, np.random.default_rng(2))["image"]
  assert a.shape == (24, 24, 3) and not np.array_equal(a, b)
  # Explicit op strings; a folder of grayscale images only is one channel.
  ds = sources.load(data_cfg(f"folder:{tmp_path}", pp_train="decode|resize(10, 14)", pp_eval="decode|resize(10, 14)",
                             test_fraction=0.5, channels=1))
  assert ds.image_shape == (10, 14, 1) and ds.split("test").get([0])[0].shape == (1, 10, 14, 1)
  with pytest.raises(UserError, match="one input size"):
    sources.load(data_cfg(f"folder:{tmp_path}", pp_train="decode|resize(8)", pp_eval="decode|resize(9)"))


def test_folder_errors(tmp_path):
  with pytest.raises(UserError, match="not found"):
    sources.load(data_cfg(f"folder:{tmp_path}/missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="no class subfolders"):
    sources.load(data_cfg(f"folder:{tmp_path}/empty"))
  make_folder(tmp_path / "same", per_class=2)
  with pytest.raises(UserError, match="different sizes"):  # kept at their size, then one is not
    Image.new("RGB", (30, 30)).save(tmp_path / "same" / "cat" / "big.png")
    sources.load(data_cfg(f"folder:{tmp_path}/same", pp_train="decode", pp_eval="decode"))


def _find(split, suffix):
  return next(i for i in range(len(split)) if split.describe(i).endswith(suffix))


def test_corrupt_file_under_both_policies(tmp_path, caplog):
  make_folder(tmp_path, per_class=4)
  cfg = data_cfg(f"folder:{tmp_path}", image_size=16, test_fraction=0.5)
  split = sources.load(cfg).split("train")  # indexed while every file was fine
  bad = _find(split, "png")
  with open(split.describe(bad), "wb") as f:
    f.write(b"not a png")
  name = split.describe(bad)[len(str(tmp_path)) + 1:]
  with pytest.raises(UserError, match=f"unreadable image .*{name}.*on_bad_image=skip"):
    split.get(np.arange(len(split)))  # found when read
  with pytest.raises(UserError, match=f"unreadable image .*{name}"):
    sources.load(cfg)  # found by the start-up header sample (a small folder is sampled whole)
  cfg.on_bad_image = "skip"
  split = sources.load(cfg).split("train")
  bad = _find(split, name)
  images, _ = split.get(np.arange(len(split)))
  assert not images[bad].any() and images[(bad + 1) % len(split)].any()  # black in its place, the rest decoded
  sharding = parallel.batch_sharding(parallel.make_mesh())
  with caplog.at_level("WARNING", logger="imgrec"):
    batches = list(pipeline.train_batches(split, len(split), 0, 0, 1, sharding, 0, workers=0))
    evals = list(pipeline.eval_batches(split, len(split), sharding, 0, workers=0))
  image = np.asarray(batches[0][1]["image"])
  assert image.shape[0] == len(split) and all(image[k].any() for k in range(len(split)))  # replaced, not black
  assert int(np.asarray(evals[0]["mask"]).sum()) == len(split) - 1  # left out of the evaluation
  messages = [r.getMessage() for r in caplog.records]
  assert any(name in m and "(1 so far)" in m for m in messages)
  assert any("training skipped 1 unreadable" in m for m in messages)
  assert any("evaluation skipped 1 unreadable" in m for m in messages)


def test_labels_classes_and_validation_never_decode(tmp_path, monkeypatch):
  make_folder(tmp_path / "train", per_class=6)
  make_folder(tmp_path / "val", per_class=2)
  monkeypatch.setattr(splits.FileSplit, "raw", lambda self, i: pytest.fail("decoded an image"))
  ds = sources.load(data_cfg(f"folder:{tmp_path}", classes=(2, 0), train_per_class=3, eval_split="val"))
  assert ds.class_names == ("fox", "cat") and len(ds.split("train")) == 6 and len(ds.split("val")) == 4
  assert sorted(ds.split("train").labels.tolist()) == [0, 0, 0, 1, 1, 1]
  assert ds.split("train").describe(0).startswith(str(tmp_path / "train" / "cat"))
  with pytest.raises(UserError, match="already has a val split"):
    sources.with_validation(ds, "train", 0.3)
  ds = sources.load(data_cfg(f"folder:{tmp_path}/train", test_fraction=0.5))
  ds = sources.with_validation(ds, "train", 0.34)
  assert len(ds.split("val")) == 3 and sorted(ds.split("val").labels.tolist()) == [0, 1, 2]


def test_tfds_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=24):
    ds = sources.load(data_cfg("tfds:mnist"))
    assert ds.class_names == tuple(str(i) for i in range(10)) and ds.image_shape == (28, 28, 1)
    x, y = ds.split("train").get(np.arange(8))
    assert x.shape == (8, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int32
    assert len(ds.split("test")) == 24


def test_tfds_variable_size_images_train_and_eval(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):  # imagenet2012's images have unknown shape: 5-50 px each side
    ds = sources.load(data_cfg("tfds:imagenet2012", image_size=16, eval_split="validation"))
    train, val = ds.split("train"), ds.split("validation")
    sizes = {train.raw(i)[0].shape[:2] for i in range(len(train))}
    assert len(sizes) > 3 and ds.image_shape == (16, 16, 3) and ds.num_classes == 1000
    assert ds.pp_train == "decode|random_resized_crop(16)|flip"
    labels = [train.raw(i)[1] for i in range(len(train))]
    monkeypatch.setattr(splits.TfdsSplit, "raw", lambda self, i: pytest.fail("decoded a record for its label"))
    assert train.labels.tolist() == labels
    sub = sources.load(data_cfg("tfds:imagenet2012", image_size=16, eval_split="validation",
                                classes=tuple(sorted(set(labels))[:2])))
    assert len(sub.split("train")) == sum(l in sorted(set(labels))[:2] for l in labels)
    monkeypatch.undo()
    sharding = parallel.batch_sharding(parallel.make_mesh())
    (_, b0), (_, b1) = list(pipeline.train_batches(train, 4, 0, 0, 2, sharding, 0, workers=0))
    assert b0["image"].shape == (4, 16, 16, 3) and np.asarray(b0["label"]).tolist() != np.asarray(b1["label"]).tolist()
    evals = list(pipeline.eval_batches(val, 5, sharding, 0, workers=0))
    assert len(evals) == 3 and int(sum(np.asarray(e["mask"]).sum() for e in evals)) == 12
    np.testing.assert_array_equal(np.asarray(evals[0]["image"]), val.get(np.arange(5))[0])


def test_tfds_record_label_from_a_serialized_example():
  pytest.importorskip("tensorflow_datasets")
  from tensorflow_datasets.proto import tf_example_pb2
  ex = tf_example_pb2.Example()
  ex.features.feature["image"].bytes_list.value.append(b"\xff\xd8 a jpeg")
  ex.features.feature["label"].int64_list.value.append(417)
  assert splits.record_label(ex.SerializeToString()) == 417
  assert splits.record_label({"label": np.int64(3), "image": None}) == 3


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


@pytest.mark.parametrize("overrides,message", [
    (dict(pp_train="decode|resize(8)"), "held in memory"),
    (dict(source="folder:/x", pp_eval="decode|resize(8)", image_size=8), "not both"),
    (dict(channels=2), "data.channels"), (dict(on_bad_image="ignore"), "error or skip"),
    (dict(workers=-2), "data.workers"), (dict(norm="cifar"), "data.norm"),
    (dict(norm="imagenet", mean=(0.5,), std=(0.5,)), "not both"), (dict(mean=(0.5, 0.5), std=(0.5,)), "same number"),
    (dict(mean=(0.5,), std=(0.0,)), "std > 0"), (dict(stats_examples=0), "stats_examples")])
def test_data_config_errors(overrides, message):
  cfg = config.defaults()
  for k, v in overrides.items():
    cfg.data[k] = v
  with pytest.raises(UserError, match=message):
    config.validate(cfg)


def test_a_lone_split_folder_is_read_as_the_data_not_as_a_class(tmp_path, caplog):
  """DIR/train/<class>/ alone: its classes, split with data.test_fraction (not one class named "train"). DIR/val/
  alone is refused naming the layout expected."""
  photo_folder(tmp_path / "only_train" / "train", n=12, classes=3)
  cfg = config.defaults().data
  cfg.source, cfg.image_size, cfg.test_fraction = f"folder:{tmp_path / 'only_train'}", 16, 0.25
  with caplog.at_level("WARNING", logger="imgrec"):
    ds = sources.load(cfg)
  assert ds.class_names == ("c0", "c1", "c2") and len(ds.split("train")) == 9 and len(ds.split("test")) == 3
  assert any("holds only train/" in r.getMessage() for r in caplog.records)
  photo_folder(tmp_path / "only_val" / "val", n=6, classes=2)
  cfg.source = f"folder:{tmp_path / 'only_val'}"
  with pytest.raises(UserError, match=r"holds only val/ and no train/: folder:DIR reads DIR/train/<class>/"):
    sources.load(cfg)
