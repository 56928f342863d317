"""The task layer: config.task picks a task module; classification on it keeps today's examples, batches, train
metrics and evaluation record."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from imgrec import cli, parallel, tasks, workdir as wd
from imgrec.data import pipeline
from imgrec.errors import UserError
from imgrec.serve import app, protocol
from imgrec.serve.batcher import Batcher
from imgrec.state import variables
from imgrec.tasks import classification
from imgrec.tasks.classification import losses
from tests.conftest import tiny_config
from tests.helpers import ROOT


def test_unknown_task_is_a_one_line_error(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  assert cli.main(["train", "--config.task=nope", "--workdir", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err
  assert err.strip() == ("imgrec: error: unknown task 'nope' (config.task); known tasks: classification, detection, "
                         "image_text, segmentation, verification")
  assert not (tmp_path / "w" / "config.json").exists()  # refused before anything is written
  with pytest.raises(UserError, match="select_metric 'map' is not a metric of the classification task; use one "
                                      "of accuracy, loss"):
    tasks.for_config(tiny_config(select_metric="map"))
  assert tasks.get("classification") is classification and tasks.select_direction(classification, "loss") == "min"


def test_classification_examples_batches_metrics_and_record():
  cfg = tiny_config()
  ds = classification.open_data(cfg)
  split = ds.split("train")
  # Examples are feature dicts; the pipeline stacks what `spec` names and adds "mask" to eval batches.
  assert split.spec == {"image": ((8, 8, 1), np.uint8), "label": ((), np.int32)}
  example = split.example(3, True, np.random.default_rng(0))
  assert sorted(example) == ["image", "label"] and example["label"] == split.labels[3]
  mesh = parallel.make_mesh()
  batch = next(iter(pipeline.eval_batches(split, 32, parallel.batch_sharding(mesh), prefetch_size=0)))
  assert sorted(batch) == ["image", "label", "mask"] and batch["image"].dtype == jnp.uint8

  # The train step's metrics are the ones it had: the loss is the cross-entropy of the model's logits against
  # the one-hot labels (no augmentation, no smoothing here) and accuracy their argmax accuracy.
  info = wd.data_info(cfg, ds)
  built = wd.build(cfg, info, mesh)
  state = jax.jit(built.init)()
  images, labels = split.get(np.arange(32))
  step = jax.jit(classification.make_train_step(built.model, built.tx, info, cfg))
  _, metrics = step(state, {"image": images, "label": labels})
  assert sorted(metrics) == ["accuracy", "finite", "grad_norm", "loss"]
  x = (images / 255.0 - np.asarray(info["mean"])) / np.asarray(info["std"])
  drop_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))[1]  # the step's dropout key
  logits, _ = built.model.apply(variables(state), jnp.asarray(x, jnp.float32), train=True, mutable=["batch_stats"],
                                rngs={"dropout": drop_rng})
  expected = float(losses.soft_cross_entropy(logits, jax.nn.one_hot(labels, 10)))
  assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
  assert float(metrics["accuracy"]) == pytest.approx(float(np.mean(np.argmax(logits, -1) == labels)))
  assert bool(metrics["finite"]) and float(metrics["grad_norm"]) > 0

  # The evaluation record metrics.jsonl keeps, from per-example outputs.
  rng = np.random.default_rng(0)
  out = {"logits": rng.normal(size=(50, 10)).astype(np.float32), "label": rng.integers(0, 10, 50)}
  record, summary = classification.evaluate(out, split, info, cfg)
  assert list(record) == ["accuracy", "loss", "examples", "top5_accuracy", "ece"]
  assert record["examples"] == 50 and record["loss"] == pytest.approx(
      float(optax.softmax_cross_entropy_with_integer_labels(out["logits"], out["label"]).mean()), rel=1e-5)
  assert tasks.line(classification, {"split": "test", **record}).startswith("test accuracy 0.")
  assert sorted(classification.summary_images({"split": "test"}, summary)) == ["test/confusion_matrix",
                                                                               "test/reliability"]


def test_served_outputs_come_from_the_task():
  """The server's outputs, metadata and classification extension are the task's; a model of another task gets a
  clear refusal from the classification-only routes, and no classification extension."""
  names = ("a", "b", "c")
  sizes = classification.output_sizes(None, {"class_names": names})
  spec = protocol.ModelSpec((4, 4, 1), names, "", tasks.contract.resolve(classification.OUTPUTS, sizes),
                            lambda values, k: classification.classification_strings(values, k, names))
  stub = types.SimpleNamespace(apply=lambda v, x, train: x)  # the "model" returns its input as logits
  predict = classification.make_predict(stub, (0.0,), (1.0,), normalized=True)
  outputs = jax.tree.map(np.asarray, predict({}, jnp.array([[1.0, 3.0, 2.0]], jnp.float32)))
  assert sorted(outputs) == ["logits", "probabilities"] and outputs["probabilities"].dtype == np.float32
  np.testing.assert_allclose(outputs["probabilities"], jax.nn.softmax(jnp.array([[1.0, 3.0, 2.0]])), rtol=1e-6)
  req = protocol.requested_outputs([{"name": "probabilities", "parameters": {"classification": 2}}], False, spec)
  assert spec.classify(outputs["probabilities"], req[0]["classification"])[0][0].endswith(":1:b")
  meta = protocol.model_metadata(types.SimpleNamespace(name="m", spec=spec), [])
  assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
                             {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
  other = protocol.ModelSpec((4, 4, 1), names, "", (("boxes", "FP32", (10, 4)),))
  with pytest.raises(protocol.RequestError, match="not a classifier"):
    protocol.requested_outputs([{"name": "boxes", "parameters": {"classification": 1}}], False, other)
  model = app.ServedModel("det", 1, "/nowhere")
  model.task = types.SimpleNamespace(NAME="detection")
  with pytest.raises(protocol.RequestError, match="'det' is a detection model; :classify serves classifiers only"):
    model.classifier(":classify")


def test_the_batcher_hands_out_named_outputs():
  """A task's model may give named outputs: the batcher merges, pads and splits every one alike."""
  b = Batcher(lambda x: {"sum": x.sum(1), "first": x[:, 0]}, (1, 4), 0.05, 16)
  try:
    futures = [b.submit(np.full((n, 3), i, np.float32)) for i, n in ((1, 2), (2, 1), (3, 3))]
    for (i, n), f in zip(((1, 2), (2, 1), (3, 3)), futures):
      out = f.result(timeout=10)
      np.testing.assert_array_equal(out["sum"], np.full(n, 3 * i))
      np.testing.assert_array_equal(out["first"], np.full(n, i))
  finally:
    b.close()


def test_the_step_takes_a_dict_of_model_inputs():
  """A task whose model reads more than images (an image-text model's tokens) gives x as a dict: the step
  standardises x["image"] only, passes the rest as it is, and splits every leaf alike under accumulation."""
  import flax.linen as nn

  class Both(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      if not isinstance(x, dict):  # init_state traces images alone: the model makes up its other inputs
        x = {"image": x, "tokens": jnp.zeros((x.shape[0], 2))}
      return nn.Dense(3)(x["image"].reshape(x["image"].shape[0], -1)) + x["tokens"].sum(-1, keepdims=True)

  seen = {}

  def inputs(rng, batch):
    return {"image": batch["image"] / 255.0, "tokens": batch["tokens"]}, {}

  def loss(outputs, targets, x, aux):
    seen["tokens"] = x["tokens"].shape
    return jnp.mean(outputs**2), {"image_mean": jnp.mean(x["image"]), "tokens_sum": jnp.sum(x["tokens"])}

  model, tx = Both(), optax.sgd(0.1)
  batch = {"image": np.full((4, 2, 2, 1), 255, np.uint8), "tokens": np.arange(8, dtype=np.float32).reshape(4, 2)}
  from imgrec import config, state as train_state, steps
  for accum in (1, 2):
    cfg = config.defaults()
    cfg.optim.accum_steps = accum
    state = train_state.init_state(model, tx, 0, (2, 2, 1))
    _, metrics = jax.jit(steps.make_train_step(model, tx, (0.5,), (0.25,), inputs, loss, cfg))(state, batch)
    assert bool(metrics["finite"])
    assert float(metrics["image_mean"]) == pytest.approx(2.0)  # (1 - 0.5) / 0.25: standardised
    assert float(metrics["tokens_sum"]) * accum == pytest.approx(28.0)  # as given (0 + ... + 7), per micro-batch
    assert seen["tokens"] == (4 // accum, 2)  # split like the images
