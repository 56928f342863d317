"""The image-text task module (imgrec/tasks/image_text/__init__.py) through the shared step and eval loop: a few
real training steps of a tiny SigLIP on the caption set, zero-shot and retrieval over streamed embeddings, the
report's files; LiT leaves the image tower as it was; a captions file opens; bad settings are one clear error."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from imgrec import cli, config, optim, parallel, state, steps, tasks
from imgrec.errors import UserError
from imgrec.tasks import image_text as task
from imgrec.tasks.image_text import data, zeroshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"image": dict(patch=4, width=16, depth=1, heads=2, mlp_dim=32, pool="map"),
        "text": dict(vocab_size=32, max_len=8, width=16, depth=1, heads=2, mlp_dim=32)}


def _cfg(**v):
  cfg = config.defaults()
  cfg.task = "image_text"
  cfg.data.source = "glyph_captions"
  cfg.data.update(dict(image_size=16, caption_train=64, caption_test=24, caption_unseen=24))
  cfg.image_text.update({"embed_dim": 16, "text_len": 8, **v})
  cfg.model.name = "siglip_b16"
  cfg.model.kwargs = ml_collections.ConfigDict(TINY)
  cfg.batch_size = 16
  cfg.optim.weight_decay = 0.0
  return cfg


def _info(ds):
  return {"class_names": list(ds.class_names), "mean": [0.5] * 3, "std": [0.25] * 3,
          "image_shape": list(ds.image_shape)}


def _train(cfg, n=3):
  ds = task.open_data(cfg)
  info = _info(ds)
  model = task.create_model(cfg, info)
  tx, _ = optim.make(cfg, n, n)
  st0 = state.init_state(model, tx, 0, ds.image_shape)  # traced with images alone: the text tower made up
  step = jax.jit(steps.make_train_step(model, tx, info["mean"], info["std"], task.make_inputs(cfg, info),
                                       task.make_loss(cfg, info, None)[0], cfg))
  st, metrics = st0, []
  for i in range(n):
    st, m = step(st, ds.split("train").take(np.arange(i * 16, (i + 1) * 16)))
    metrics.append(m)
  return ds, info, model, st0, st, metrics


@pytest.mark.parametrize("loss", ["sigmoid", pytest.param("softmax", marks=pytest.mark.slow)])
def test_trains_and_evaluates_zero_shot_and_retrieval(tmp_path, loss):
  cfg = _cfg(loss=loss)
  task.validate(cfg)
  ds, info, model, st0, st, metrics = _train(cfg)
  assert all(bool(m["finite"]) and "pair_accuracy" in m for m in metrics)
  assert "txt" in st0.params and "t" in st0.params and ("b" in st0.params) == True  # noqa: E712 (siglip)
  test = ds.split("test")
  assert int(test.arrays["unseen"].sum()) == 24 and len(test) == 48
  out = steps.stream(task.make_eval_fn(model, info, cfg), state.variables(st), test, 16, parallel.make_mesh())
  assert out["image_embeds"].shape == (48, 16) and out["logits"].shape == (48, 10)
  record, summary = task.evaluate(out, test, info, cfg)
  assert set(record) == set(task.RECORD) and record["examples"] == 48
  for k in task.RECORD[:-1]:
    assert 0.0 <= record[k] <= 1.0, k
  # the unseen accuracy is the argmax of the unseen examples' logits, recomputed here
  unseen = test.arrays["unseen"]
  want = np.mean(out["logits"][unseen].argmax(1) == test.arrays["label"][unseen])
  assert record["zeroshot_accuracy"] == pytest.approx(want)
  assert np.sum(summary["confusion"]) == 24
  summary.update(split="test", step=3)
  task.write_report(str(tmp_path), out, test, info, summary)
  for name in ("metrics.json", "confusion.png", "examples.png", "report.md"):
    assert (tmp_path / name).stat().st_size > 0, name
  assert json.loads((tmp_path / "metrics.json").read_text())["zeroshot_accuracy"] == record["zeroshot_accuracy"]
  # the streamed zero-shot logits are the host classifier's (zeroshot.py: templates averaged, re-normalised)
  cfg2 = _cfg(loss=loss, templates=("a photo of the digit {}", "the digit {}"))
  two = steps.stream(task.make_eval_fn(model, info, cfg2), state.variables(st), test, 16, parallel.make_mesh())
  clf = zeroshot.classifier(model, state.variables(st), data.tokenizer(cfg2), ds.class_names, cfg2.image_text.templates)
  np.testing.assert_allclose(two["logits"], zeroshot.logits(clf, two["image_embeds"]), rtol=1e-4, atol=1e-4)
  assert not np.allclose(two["logits"], out["logits"], atol=1e-4)
  predicted = task.make_predict(model, info["mean"], info["std"])(state.variables(st), test.arrays["image"][:4])
  np.testing.assert_allclose(predicted["image_embeds"], out["image_embeds"][:4], rtol=1e-4, atol=1e-5)


def test_locked_image_tower_never_moves_and_the_text_tower_does():
  _, _, _, st0, st, _ = _train(_cfg(lock_image=True), n=2)
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), st0.params, st.params)
  assert all(jax.tree.leaves(same["img"]))
  assert not all(jax.tree.leaves(same["txt"]))
  _, _, _, st0, st, _ = _train(_cfg(), n=2)  # unlocked, the same steps move it
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), st0.params, st.params)
  assert not any(jax.tree.leaves(same["img"]))


def test_captions_file_source(tmp_path):
  rng = np.random.default_rng(0)
  lines = []
  for i in range(6):
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(tmp_path / f"{i}.png")
    row = {"image": f"{i}.png", "caption": f"a photo of the digit {'one' if i % 2 else 'two'}"}
    lines.append(json.dumps({**row, **({"label": "one" if i % 2 else "two"} if i < 4 else {})}))
  (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
  cfg = _cfg()
  cfg.data.source = f"captions:{tmp_path / 'c.jsonl'}@{tmp_path}"
  cfg.data.test_fraction = 0.5
  task.validate(cfg)
  ds = task.open_data(cfg)
  assert ds.class_names == ("one", "two") and ds.image_shape == (16, 16, 3)
  train, test = ds.split("train"), ds.split("test")
  assert len(train) == len(test) == 3 and not test.arrays["unseen"].any()
  labels = np.concatenate([train.arrays["label"], test.arrays["label"]])
  assert sorted(labels.tolist()) == [-1, -1, 0, 0, 1, 1]
  assert train.spec["tokens"] == ((8,), np.int32) and train.spec["image"] == ((16, 16, 3), np.uint8)
  (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")  # a folder with its captions file
  cfg.data.source = f"captions:{tmp_path}"
  same = task.open_data(cfg).split("test")
  np.testing.assert_array_equal(same.arrays["image"], test.arrays["image"])
  (tmp_path / "bad.jsonl").write_text('{"image": "0.png"}\n')
  cfg.data.source = f"captions:{tmp_path / 'bad.jsonl'}"
  with pytest.raises(UserError, match=r"bad.jsonl:1 is not a JSON object with \"image\" and \"caption\""):
    task.open_data(cfg)


@pytest.mark.parametrize("change, message", [
    (dict(loss="hinge"), "image_text.loss 'hinge' is not one of sigmoid, softmax"),
    (dict(templates=("a {} {}",)), "exactly one '{}'"),
    (dict(lock_image=True), "optim.weight_decay would still shrink it"),
])
def test_bad_settings_are_one_clear_error(change, message):
  cfg = _cfg(**change)
  if "lock_image" in change:
    cfg.optim.weight_decay = 1e-4
  with pytest.raises(UserError, match=message.replace("{", r"\{").replace("}", r"\}")):
    task.validate(cfg)
  cfg = _cfg()
  cfg.data.source = "no_such_source"
  with pytest.raises(UserError, match="unknown data source 'no_such_source'"):
    task.open_data(cfg)
  cfg = _cfg()
  cfg.model.name = "resnet18"
  with pytest.raises(UserError, match="needs a two-tower model"):
    task.create_model(cfg, {})
  cfg = _cfg(text_len=12)
  with pytest.raises(UserError, match="takes 8 tokens but the tokenizer pads to 12"):
    task.create_model(cfg, {})
  assert tasks.get("image_text") is task


@pytest.mark.slow
def test_trains_and_evaluates_through_the_cli(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  w = str(tmp_path / "w")
  tiny = [f"--config.model.kwargs.{tower}.{k}={v}" for tower in ("image", "text") for k, v in TINY[tower].items()
          if k != "pool"]
  args = ["--config", "configs/image_text_glyphs.py", "--workdir", w, "--config.steps=4", "--config.batch_size=16",
          "--config.eval_every=4", "--config.checkpoint_every=4", "--config.log_every=2",
          "--config.data.caption_train=64", "--config.data.caption_test=16", "--config.data.caption_unseen=16",
          "--config.image_text.embed_dim=16", "--config.image_text.text_len=8", "--config.data.image_size=16", *tiny]
  assert cli.main(["train", *args]) == 0
  records = [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]
  evals = [r for r in records if "zeroshot_accuracy" in r]
  assert evals and evals[-1]["step"] == 4 and 0 <= evals[-1]["zeroshot_accuracy"] <= 1
  assert cli.main(["eval", "--workdir", w]) == 0
  assert os.path.isfile(os.path.join(w, "report", "confusion.png"))
