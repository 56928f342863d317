"""Compression: int8 PTQ runs int8 x int8 -> int32 ops; bf16 weights; global magnitude pruning."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from imgrec import compress, config, evaluate, optim, state as train_state, steps, train, workdir as wd
from imgrec.data import sources
from imgrec.tasks import classification
from imgrec.tasks.classification import losses


def test_int8_and_bf16(trained_workdir, tmp_path, monkeypatch):
  r = compress.compress_workdir(trained_workdir, "int8", str(tmp_path / "q.npz"))
  assert r["accuracy"] >= r["accuracy_fp32"] - 0.02, r
  assert r["bytes"] < 0.6 * r["bytes_fp32"], r  # tiny model: npz headers weigh; see BENCHMARKS.md for ResNet
  cfg, info, model, state = wd.restore(trained_workdir)
  q = compress.quantize.load_int8(str(tmp_path / "q.npz"))
  assert q["params"]["conv0_0"]["kernel"].dtype == np.int8 and q["params"]["head"]["kernel"].dtype == np.int8
  images, _ = sources.load(cfg.data).split("test").get(np.arange(32))
  x = steps.normalize(images, info["mean"], info["std"])
  hlo = jax.jit(lambda v, x: compress.quantize.apply_int8(model, v, x)).lower(q, x).as_text()
  int8_ops = [l for l in hlo.splitlines() if re.search(r"stablehlo\.(convolution|dot_general)", l)]
  assert len(int8_ops) == 4  # 2 convs + fc + head, all on int8 operands with int32 results
  assert all(re.search(r"\(tensor<[^>]*xi8>, tensor<[^>]*xi8>\) -> tensor<[^>]*xi32>", l) for l in int8_ops), int8_ops
  float_logits = model.apply(train_state.variables(state), x, train=False)
  int8_logits = compress.quantize.apply_int8(model, q, x)
  assert np.mean(np.argmax(float_logits, -1) == np.argmax(int8_logits, -1)) >= 0.9
  assert 0 < float(jnp.max(jnp.abs(float_logits - int8_logits))) < 0.5  # quantised, not a float copy

  made, real = [], compress.correct_fn  # bf16 measures the fp32 model and its bf16 weights with one function
  monkeypatch.setattr(compress, "correct_fn", lambda *a: made.append(real(*a)) or made[-1])
  b = compress.compress_workdir(trained_workdir, "bf16", str(tmp_path / "b.npz"))
  assert abs(b["accuracy"] - b["accuracy_fp32"]) <= 0.01 and b["bytes"] < 0.7 * b["bytes_fp32"], b
  assert len(made) == 1 and steps._jitted(made[0], compress.parallel.make_mesh())._cache_size() == 1  # one compile


def test_magnitude_masks_and_schedule():
  params = {"conv": {"kernel": jnp.arange(1.0, 101.0).reshape(5, 5, 1, 4), "bias": jnp.ones(4)},
            "head": {"kernel": -jnp.arange(101.0, 201.0).reshape(10, 10)}}
  masks = optim.magnitude_masks(params, 0.3)
  assert float(masks["conv"]["kernel"].sum()) == 40  # the 60 smallest |w| of 200 are all in conv
  assert float(masks["head"]["kernel"].sum()) == 100 and float(masks["conv"]["bias"].sum()) == 4
  assert optim.sparsity_at(0, 100, 0.9) == 0 and optim.sparsity_at(75, 100, 0.9) == 0.9
  assert 0 < optim.sparsity_at(30, 100, 0.9) < 0.9


def test_prune_finetune_makes_sparse_workdir(trained_workdir, tmp_path):
  out = str(tmp_path / "pruned")
  r = compress.compress_workdir(trained_workdir, "prune", out, sparsity=0.5, steps=30, finetune=train.train)
  assert r["sparsity"] >= 0.499, r
  assert r["accuracy"] > 0.5, r  # half of a 4k-param model gone, 30 steps to recover; chance is 0.1
  assert r["bytes"] < r["bytes_fp32"], r  # zeros deflate
  result = evaluate.evaluate_workdir(out)  # a normal workdir
  assert abs(result["accuracy"] - r["accuracy"]) < 1e-6
  assert os.path.isfile(os.path.join(out, "params.npz"))


def test_kd_loss_formula():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
  labels = np.array([0, 1, 2, 3])
  T = 3.0
  ps = np.exp(s / T) / np.exp(s / T).sum(-1, keepdims=True)
  pt = np.exp(t / T) / np.exp(t / T).sum(-1, keepdims=True)
  ce = -np.mean(np.log(np.exp(s) / np.exp(s).sum(-1, keepdims=True))[np.arange(4), labels])
  kl = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1))
  targets = jnp.asarray(np.eye(5, dtype=np.float32)[labels])
  got = float(losses.kd_loss(jnp.asarray(s), jnp.asarray(t), targets, 0.3, T))
  np.testing.assert_allclose(got, 0.3 * ce + 0.7 * T**2 * kl, rtol=1e-5)
  assert float(losses.kd_loss(jnp.asarray(t), jnp.asarray(t), targets, 0.0, T)) < 1e-6  # student = teacher


def test_distillation_step_uses_teacher(trained_workdir):
  """One jitted train step with the distillation objective: the teacher runs inside it, its variables an input."""
  import re
  import optax
  import pytest
  from imgrec import models
  from imgrec.errors import UserError
  cfg, info, teacher, t_state = wd.restore(trained_workdir)
  t_vars = train_state.variables(t_state)
  objective = losses.distillation(teacher, info, info, alpha=0.0, temperature=2.0)
  images, labels = sources.load(cfg.data).split("train").get(np.arange(32))
  x = steps.normalize(images, info["mean"], info["std"])
  t_logits = teacher.apply(t_vars, x, train=False)
  # alpha = 0: the loss is T^2 KL to the teacher, zero when the student is the teacher
  targets = jax.nn.one_hot(labels, 10)
  assert float(objective(t_logits, targets, x, t_vars)) < 1e-5
  assert float(objective(t_logits * 0, targets, x, t_vars)) > 0.01
  # a student normalising with other statistics: the teacher must still see its own normalisation
  s_info = {**info, "mean": [m + 0.2 for m in info["mean"]], "std": [s * 0.5 for s in info["std"]]}
  x_s = steps.normalize(images, s_info["mean"], s_info["std"])
  assert float(losses.distillation(teacher, info, s_info, 0.0, 2.0)(t_logits, targets, x_s, t_vars)) < 1e-5
  student = models.create("small_cnn", 10, widths=(4, 8), hidden=16)
  tx = optax.adam(1e-2)
  state = train_state.init_state(student, tx, 0, tuple(info["image_shape"]))
  step = jax.jit(classification.make_train_step(student, tx, info, config.defaults(), objective=objective))
  batch = {"image": images, "label": labels}
  new, metrics = step(state, batch, t_vars)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
  assert not np.allclose(np.asarray(new.params["head"]["kernel"]), np.asarray(state.params["head"]["kernel"]))
  # The teacher's kernels are arguments of the compiled program, not constants baked into it.
  kernel_type = "tensor<" + "x".join(map(str, t_vars["params"]["conv0_0"]["kernel"].shape)) + "xf32>"
  text = step.lower(state, batch, t_vars).as_text()
  assert kernel_type in text and not re.search(r"constant dense<[^>]*> : " + re.escape(kernel_type), text)
  with pytest.raises(UserError, match="classes"):
    losses.distillation(teacher, info, {**info, "class_names": ["a", "b"]}, 0.5, 4.0)
