"""Zero-shot classification of classification data sets by an image-text run, through the real pipeline: a
classification source (digits, folder:) as image-text data (RGB at the run's size, class-name captions), its
zero-shot accuracy recorded in metrics.jsonl and used for selection on a carved val split, `imgrec eval
--config.data.source=digits` on a run trained on the caption set, and the clear errors of bad class names."""
import json
import logging
import math
import os

import numpy as np
import pytest
from PIL import Image

from imgrec import cli, evaluate, workdir as wd
from imgrec.errors import UserError
from imgrec.tasks import image_text as task
from imgrec.tasks.image_text import captions
from tests.test_image_text_task import TINY, _cfg  # the tiny two tower on the caption set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGIT_NAMES = tuple(str(i) for i in range(10))  # the digits source's class names


def _args(w, *more, vocab=32):
  tiny = [f"--config.model.kwargs.{tower}.{k}={v}" for tower in ("image", "text") for k, v in TINY[tower].items()
          if k not in ("pool", "vocab_size")]
  return ["--config", "configs/image_text_glyphs.py", "--workdir", w, "--config.steps=2", "--config.batch_size=16",
          "--config.eval_every=2", "--config.checkpoint_every=2", "--config.log_every=1",
          "--config.data.caption_train=32", "--config.data.caption_test=16", "--config.data.caption_unseen=16",
          "--config.image_text.embed_dim=16", "--config.image_text.text_len=8", "--config.data.image_size=16",
          f"--config.model.kwargs.text.vocab_size={vocab}", *tiny, *more]


def _records(w):
  return [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]


def _folder(root, names, n=12, size=12):
  """root/<name>/*.png: n grey images per class, each class a different brightness."""
  rng = np.random.default_rng(0)
  for c, name in enumerate(names):
    os.makedirs(root / name, exist_ok=True)
    for i in range(n):
      pixels = np.clip(rng.normal(60 + 60 * c, 20, (size, size)), 0, 255).astype(np.uint8)
      Image.fromarray(pixels, "L").save(root / name / f"{i}.png")
  return root


def test_digits_open_as_image_text_data_with_class_name_captions_and_a_val_split(tmp_path):
  tok_dir = tmp_path / "tok"
  tok = captions.write_tokenizer(str(tok_dir), 8, extra=DIGIT_NAMES)
  cfg = _cfg(tokenizer=str(tok_dir), templates=("a photo of the digit {}", "the digit {}"))
  cfg.data.source, cfg.data.val_fraction = "digits", 0.2
  task.validate(cfg)
  ds = task.open_data(cfg)
  assert ds.class_names == DIGIT_NAMES and ds.image_shape == (16, 16, 3)
  train, val, test = ds.split("train"), ds.split("val"), ds.split("test")
  assert train.spec["image"] == ((16, 16, 3), np.uint8) and len(val) > 0 and len(test) > 0
  assert len(train) + len(val) + len(test) == 1797  # sklearn's digits, every image in one split
  img = train.arrays["image"]
  assert np.array_equal(img[..., 0], img[..., 2])  # grey made RGB
  # each caption is its class name in the first template, through the run's tokenizer
  want = tok.encode([f"a photo of the digit {c}" for c in train.labels[:5]]).ids
  np.testing.assert_array_equal(train.arrays["tokens"][:5], want)
  assert train.groups is None and not test.unseen.any()  # no captions of its own: no retrieval


def test_a_caption_set_run_has_a_val_split():
  cfg = _cfg()
  cfg.data.val_fraction = 0.25
  task.validate(cfg)
  ds = task.open_data(cfg)
  train, val = ds.split("train"), ds.split("val")
  assert (len(train), len(val)) == (48, 16) and not val.unseen.any()
  whole = task.open_data(_cfg()).split("train").arrays["image"]
  joined = np.concatenate([train.arrays["image"], val.arrays["image"]]).reshape(64, -1)
  assert sorted(map(bytes, joined)) == sorted(map(bytes, whole.reshape(64, -1)))  # carved, nothing lost or added


def test_the_same_prompt_for_two_classes_is_found():
  names = ("a", "b", "c")
  tokens = np.array([[[1, 2], [1, 3], [1, 2]]])  # one template; "a" and "c" tokenize alike
  assert task._same_prompts(tokens, names) == ("a", "c")
  assert task._same_prompts(np.array([[[1, 2], [1, 3], [1, 4]]]), names) is None
  # several templates: classes differ when any template tells them apart
  assert task._same_prompts(np.array([[[1, 2], [1, 2], [1, 4]], [[5, 6], [5, 7], [5, 8]]]), names) is None


def test_bad_class_names_and_templates_are_one_clear_error(tmp_path):
  cfg = _cfg()
  cfg.data.source = f"folder:{_folder(tmp_path / 'blank', ('zero', ' ', 'two'), n=3)}"
  cfg.data.workers = 0
  with pytest.raises(UserError, match="zero-shot needs every class's name, but class 0 has an empty one"):
    task.open_data(cfg)
  cfg = _cfg(templates=("a photo of a digit",))
  cfg.data.source = "digits"
  with pytest.raises(UserError, match=r"exactly one '\{\}'"):
    task.validate(cfg)
  # training on class names the tokenizer does not know: refused (evaluation only warns)
  cfg = _cfg()
  cfg.data.source = "digits"
  with pytest.raises(UserError, match="captions of classes '0' and '1' are the same tokens"):
    task.make_loss(cfg, {"class_names": list(DIGIT_NAMES)}, None)


@pytest.mark.slow
def test_train_on_digits_records_zero_shot_and_selects_on_val(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  tok_dir = str(tmp_path / "tok")
  captions.write_tokenizer(tok_dir, 8, extra=DIGIT_NAMES)
  w = str(tmp_path / "w")
  assert cli.main(["train", *_args(w, "--config.data.source=digits", f"--config.image_text.tokenizer={tok_dir}",
                                   "--config.data.val_fraction=0.2", "--config.select_metric=zeroshot_accuracy",
                                   vocab=48)]) == 0
  val = [r for r in _records(w) if "zeroshot_accuracy" in r]
  assert val and all(r["split"] == "val" for r in val) and val[-1]["step"] == 2  # never test during training
  for r in val:
    assert 0 <= r["zeroshot_accuracy"] <= r["zeroshot_top5"] <= 1 and math.isnan(r["i2t_r1"])
  assert val[-1]["examples"] == 287  # 20% of each class of digits' 1438 training images
  assert os.path.isdir(os.path.join(w, "best"))  # selected on val's zero-shot accuracy
  assert json.load(open(os.path.join(w, "dataset.json")))["class_names"] == list(DIGIT_NAMES)


@pytest.mark.slow
def test_eval_on_digits_of_a_caption_set_run(tmp_path, monkeypatch, caplog):
  monkeypatch.chdir(ROOT)
  w = str(tmp_path / "w")
  assert cli.main(["train", *_args(w)]) == 0
  with caplog.at_level(logging.WARNING, logger="imgrec"):
    result = evaluate.evaluate_workdir(w, overrides=("data.source=digits",))
  # the glyph tokenizer knows "zero" but not "0": the warning says why the scores tie
  assert any("same tokens under the run's tokenizer" in r.getMessage() for r in caplog.records)
  assert result["examples"] == 359 and result["class_names"] == list(DIGIT_NAMES)
  assert 0 <= result["zeroshot_accuracy"] <= 1 and math.isnan(result["t2i_r1"])
  report = os.path.join(w, "report")
  for name in ("metrics.json", "confusion.png", "examples.png", "report.md"):
    assert os.path.getsize(os.path.join(report, name)) > 0, name
  md = open(os.path.join(report, "report.md")).read()
  assert "every labelled example" in md and "| image to text recall@1 | n/a |" in md
  assert cli.main(["eval", "--workdir", w, "--config.data.source=digits"]) == 0
  # the digits written as the caption words: the prompts differ, no warning; a wrong count is one line
  words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="imgrec"):
    named = evaluate.evaluate_workdir(w, overrides=("data.source=digits", f"image_text.prompt_names={words!r}"))
  assert not any("same tokens" in r.getMessage() for r in caplog.records)
  assert named["examples"] == 359 and named["top_labels"] != result["top_labels"]  # ties broken
  with pytest.raises(UserError, match="prompt_names gives 2 names for the 10 classes"):
    evaluate.evaluate_workdir(w, overrides=("data.source=digits", "image_text.prompt_names=('a', 'b')"))
  with pytest.raises(UserError, match=r"--config.image_text.loss is refused"):
    evaluate.evaluate_workdir(w, overrides=("image_text.loss=sigmoid",))
  # the run's image shape still has to fit: a source that cannot be made 16x16 RGB is refused
  run = wd.restore(w, params_only=True, overrides=("data.source=digits",))
  run.info["image_shape"] = [32, 32, 3]
  with pytest.raises(UserError, match=r"image_shape \[32, 32, 3\] -> \[16, 16, 3\]"):
    wd.dataset(run)


@pytest.mark.slow
def test_train_and_eval_on_a_folder_of_classes(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  root = _folder(tmp_path / "images", ("zero", "one", "two"))  # words the caption set's tokenizer knows
  w = str(tmp_path / "w")
  assert cli.main(["train", *_args(w, f"--config.data.source=folder:{root}", "--config.data.workers=0",
                                   "--config.data.test_fraction=0.5")]) == 0
  evals = [r for r in _records(w) if "zeroshot_accuracy" in r]
  assert evals and evals[-1]["examples"] == 18 and 0 <= evals[-1]["zeroshot_accuracy"] <= 1
  info = json.load(open(os.path.join(w, "dataset.json")))
  assert info["class_names"] == ["one", "two", "zero"] and info["image_shape"] == [16, 16, 3]
  assert info["pp_eval"] == "decode|resize(16)"
  assert cli.main(["eval", "--workdir", w]) == 0
  assert os.path.getsize(os.path.join(w, "report", "examples.png")) > 0


def test_a_tfds_source_as_image_text_data():
  """tfds:NAME (tfds.testing.mock_data: no download) reads through classification's source: images decoded and
  resized to the run's size, made RGB, each with its class name's caption."""
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = _cfg()
  cfg.data.source = "tfds:mnist"
  with tfds.testing.mock_data(num_examples=12):
    ds = task.open_data(cfg)
    test = ds.split("test")
    ex = test.example(0, False, np.random.default_rng(0))
  assert ds.class_names == DIGIT_NAMES and len(test) == 12
  assert ex["image"].shape == (16, 16, 3) and ex["image"].dtype == np.uint8 and ex["tokens"].shape == (8,)
  assert int(ex["label"]) == int(test.labels[0])
