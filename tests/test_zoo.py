"""The model zoo: published parameter counts, XLA FLOPs, and one tiny model per family through
init, forward, a train step, BatchNorm train/eval behaviour and eval determinism."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import flax.linen as nn

from imgrec import models
from imgrec.tasks import classification
from imgrec.tasks.classification import losses
from imgrec.errors import UserError
from imgrec.models import profile, vit
from imgrec.models.blocks import drop_path
from tests.helpers import ROOT

TEN = {"class_names": [str(i) for i in range(10)]}  # a dataset.json's classes, for the task's create_model

# Published parameter counts (millions) at 224x224x3 and 1000 classes (torchvision / timm / papers).
PUBLISHED = {"alexnet": 61.10, "resnet18": 11.69, "resnet50": 25.56, "resnet152": 60.19, "vgg16": 138.36,
             "vgg16_bn": 138.37, "inception_v1": 6.62, "densenet121": 7.98, "mobilenet_v2": 3.50,
             "mobilenet_v3_large": 5.48, "efficientnet_b0": 5.29, "se_resnet50": 28.09, "vit_s16": 22.05,
             "vit_b16": 86.57, "vit_b32": 88.22, "vit_l16": 304.33, "convnext_tiny": 28.59, "convnext_base": 88.59}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name):
  variables = profile.abstract_variables(models.create(name, 1000), (224, 224, 3))
  millions = profile.count_params(variables["params"]) / 1e6
  assert abs(millions / PUBLISHED[name] - 1) < 0.005, (name, millions)


def test_wide_resnet_count_on_cifar():
  variables = profile.abstract_variables(models.create("wrn28_10", 10), (32, 32, 3))
  assert abs(profile.count_params(variables["params"]) / 1e6 / 36.48 - 1) < 0.005  # WRN-28-10 paper: 36.5M


# Published forward cost: ResNet-50 4.1 GMACs, MobileNetV2 0.30 GMACs, ViT-B/16 17.6 GMACs (2 FLOPs per MAC).
@pytest.mark.parametrize("name,gflops", [("resnet50", 8.2), ("mobilenet_v2", 0.60), ("vit_b16", 35.0)])
def test_xla_flops_match_published(name, gflops):
  measured = profile.describe(name)["gflops"]
  assert abs(measured / gflops - 1) < 0.10, (name, measured)


# One tiny variant per family (and per block kind), small enough to compile and step in about a second.
TINY = {
    "lenet5": dict(widths=(4, 8), hidden=(16,)),
    "alexnet": dict(widths=(8, 8, 8, 8, 8), hidden=16),
    "vgg11_bn": dict(width=4, hidden=16, pool_size=2),
    "inception_v1": dict(width=1 / 16),  # aux heads: test_inception_aux_heads_sown_in_training
    "resnet50": dict(stage_sizes=(1, 1, 1), width=4, drop_path_rate=0.5, se=True),  # bottleneck + SE
    "wrn16_4": dict(widen=1, dropout=0.3),
    "densenet121": dict(block_sizes=(2, 2), growth=4, init_features=8),
    "mobilenet_v2": dict(width_mult=0.25),
    "mobilenet_v3_small": dict(width_mult=0.25),
    "efficientnet_b0": dict(width_mult=0.25, depth_mult=0.34, drop_path_rate=0.5),
    "vit_ti4": dict(width=16, depth=2, heads=2, mlp_dim=32, drop_path_rate=0.5, dropout=0.1),
    "convnext_tiny": dict(depths=(1, 1), dims=(8, 16), drop_path_rate=0.5),
    "lstm": dict(hidden=16, dropout=0.2),
    "gru": dict(hidden=16, bidirectional=True, unroll=1),  # a scan loop: faster to compile than unrolled
}
BATCH_NORM = {"alexnet": False, "lenet5": False, "vit_ti4": False, "convnext_tiny": False, "lstm": False, "gru": False}
STOCHASTIC = {"alexnet", "vgg11_bn", "inception_v1", "resnet50", "wrn16_4", "mobilenet_v2",
              "mobilenet_v3_small", "efficientnet_b0", "vit_ti4", "convnext_tiny", "lstm"}


def test_every_family_has_a_tiny_test():
  assert {models.family(n) for n in TINY} == {models.family(n) for n in models.names()}


# These compile for 40-90 s on 2 cold CPU cores (many small convolutions, threefry init): the slow set.
SLOW_TO_COMPILE = {"inception_v1", "efficientnet_b0", "mobilenet_v2", "mobilenet_v3_small"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TO_COMPILE else n
                                  for n in sorted(TINY)])
def test_tiny_model_trains(name):
  model = models.create(name, 10, **TINY[name])
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 28, 28, 1)), jnp.float32)
  y = jnp.asarray([0, 1, 2, 3])
  variables = jax.jit(model.init)({"params": jax.random.PRNGKey(0)}, x)  # jit: one compile, not op by op
  params, stats = variables["params"], variables.get("batch_stats", {})
  assert bool(stats) == BATCH_NORM.get(name, True)
  tx = optax.sgd(0.05)

  @jax.jit
  def step(params, stats, opt_state, key):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": stats}, x, train=True, rngs={"dropout": key},
                                    mutable=["batch_stats"])
      return losses.cross_entropy(logits, y), (logits, updates.get("batch_stats", {}))
    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss, logits

  eval_fn = jax.jit(lambda p, s, key: model.apply({"params": p, "batch_stats": s}, x, train=False,
                                                  rngs={"dropout": key}, mutable=["batch_stats"]))
  new_params, new_stats, _, loss, logits = step(params, stats, tx.init(params), jax.random.PRNGKey(2))
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  assert np.isfinite(float(loss))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new_params)
  assert any(jax.tree.leaves(changed)), "the train step changed no parameter"
  if stats:  # train mode updates the running statistics, eval mode leaves them alone
    assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, new_stats)))
    out, eval_updates = eval_fn(new_params, new_stats, jax.random.PRNGKey(3))
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new_stats,
                                            eval_updates["batch_stats"])))
  else:
    out, _ = eval_fn(new_params, new_stats, jax.random.PRNGKey(3))
  out2, _ = eval_fn(new_params, new_stats, jax.random.PRNGKey(4))  # eval ignores the dropout rng
  np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))
  assert out.shape == (4, 10) and np.all(np.isfinite(np.asarray(out)))
  if name in STOCHASTIC:  # dropout / stochastic depth draw from the "dropout" rng in training
    # (from the stepped params: zero-initialised last BN scales make fresh residual branches exactly 0)
    outs = [np.asarray(step(new_params, new_stats, tx.init(params), jax.random.PRNGKey(k))[-1]) for k in range(5, 9)]
    assert any(not np.allclose(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("name", sorted(TINY))
def test_bfloat16_compute_keeps_float32_params(name):
  model = models.create(name, 7, dtype=jnp.bfloat16, **TINY[name])
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)  # also a different size and channel count
  def run(x):
    v = model.init({"params": jax.random.PRNGKey(0)}, x, train=False)
    return v, model.apply(v, x, train=False)
  variables, out = jax.eval_shape(run, x)
  assert out.shape == (2, 7) and out.dtype == jnp.float32
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}


def test_drop_path_is_per_example_and_off_in_eval():
  class Probe(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      return drop_path(self, x, 0.5, train)
  x = jnp.ones((256, 3, 3, 2))
  y = np.asarray(Probe().apply({}, x, True, rngs={"dropout": jax.random.PRNGKey(0)}))
  per_example = y.reshape(256, -1)
  assert set(np.unique(per_example)) == {0.0, 2.0}  # kept branches rescaled by 1 / (1 - rate)
  assert np.all(per_example == per_example[:, :1])    # one draw per example
  assert 0.3 < np.mean(per_example[:, 0] > 0) < 0.7
  np.testing.assert_array_equal(np.asarray(Probe().apply({}, x, False)), np.asarray(x))


def test_inception_aux_heads_sown_in_training():
  model = models.create("inception_v1", 5, width=1 / 16, aux_logits=True)
  x = jnp.zeros((2, 28, 28, 1))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert "aux1" in variables["params"] and "aux2" in variables["params"]
  _, state = jax.eval_shape(lambda v: model.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)},
                                                  mutable=["batch_stats", "intermediates"]), variables)
  assert state["intermediates"]["aux1_logits"][0].shape == (2, 5)
  default = models.create("inception_v1", 5, width=1 / 16)
  assert "aux1" not in jax.eval_shape(default.init, jax.random.PRNGKey(0), x)["params"]  # off by default


def test_vit_position_embedding_resizes_with_the_input():
  model = models.create("vit_ti4", 10, **TINY["vit_ti4"])
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))  # 4x4 grid + cls
  assert variables["params"]["pos_embedding"].shape == (1, 17, 16)
  assert jax.eval_shape(model.apply, variables, jnp.ones((2, 32, 32, 3))).shape == (2, 10)  # 8x8 grid
  pos = jnp.arange(17.0).reshape(1, 17, 1)
  resized = vit.resize_grid(pos, 1, 8, 8)
  assert resized.shape == (1, 65, 1) and resized[0, 0, 0] == 0  # class token kept
  assert float(resized[0, 1:].min()) >= 1 and float(resized[0, 1:].max()) <= 16  # interpolates the grid
  gap = models.create("vit_ti4", 10, pool="gap", **TINY["vit_ti4"])
  assert "class_token" not in jax.eval_shape(gap.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]


def test_smallest_inputs_and_clear_errors():
  for name in ("resnet50", "mobilenet_v2", "inception_v1", "vgg11_bn"):
    model = models.create(name, 10, **TINY[name])
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0],
                         jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
    assert out.shape == (1, 10), name
  with pytest.raises(UserError, match="at least 10x10"):
    jax.eval_shape(models.create("lenet5", 10).init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(UserError, match="at least 16 px"):
    jax.eval_shape(models.create("vit_s16", 10).init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(UserError, match="unknown model"):
    models.create("resnet19", 10)


def test_models_cli_lists_params_at_once_and_flops_on_request(tmp_path):
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
  run = lambda *args: subprocess.run([sys.executable, "-m", "imgrec", "models", *args], cwd=ROOT, env=env,
                                     capture_output=True, text=True, timeout=120)
  proc = run("lenet5", "--flops", "lstm", "--json")
  assert proc.returncode == 0, proc.stderr
  rows = {r["name"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
  conv, fc = (5 * 5 * 1 + 1) * 6 + (5 * 5 * 6 + 1) * 16, (400 + 1) * 120 + (120 + 1) * 84 + (84 + 1) * 1000
  assert rows["lenet5"]["params"] == conv + fc and rows["lenet5"]["input_shape"] == [28, 28, 1]
  assert rows["lenet5"]["gflops"] is None  # FLOPs only for the names asked
  # LSTM on 28 rows of 28 pixels, hidden 128: 28 steps x 4 gates x (28 + 128) x 128 MACs, at least
  assert rows["lstm"]["gflops"] * 1e9 > 28 * 4 * 156 * 128 * 2
  cache_path = tmp_path / "imgrec" / "models.json"
  cache = json.loads(cache_path.read_text())
  assert sorted(k.split("|")[:3] for k in cache) == [["gflops", "lstm", "1000"], ["row", "lenet5", "1000"],
                                                       ["row", "lstm", "1000"]]
  flops_key, = [k for k in cache if k.startswith("gflops|")]
  assert cache[flops_key] == rows["lstm"]["gflops"]
  cache[flops_key] = 123.0  # the cache is what answers next time
  cache[flops_key.replace("gflops|lstm", "row|lstm")]["params"] = 7
  cache_path.write_text(json.dumps(cache))
  again = {r["name"]: r for r in json.loads(run("lstm", "--flops", "--json").stdout.strip().splitlines()[-1])}
  assert again["lstm"]["gflops"] == 123.0 and again["lstm"]["params"] == 7
  bad = run("resnet19")
  assert bad.returncode == 2 and "unknown model" in bad.stderr
  assert run("--flops", "resnet19").returncode == 2


def test_describe_all_matches_describe_over_worker_processes(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  names = ["lenet5", "small_cnn", "lstm", "gru"]
  rows = profile.describe_all(names, 10)  # 4 names: one spawned process per core
  assert [r["name"] for r in rows] == names
  for r in rows:
    one = profile.describe(r["name"], 10, flops=False)
    assert (r["params"], tuple(r["input_shape"]), r["family"], r["gflops"]) == (
        one["params"], one["input_shape"], one["family"], None)
  assert profile.describe_all(names, 10) == rows  # the second time from the cache


@pytest.mark.parametrize("family", ["cnn", "vgg", "inception", "resnet", "densenet", "mobilenet", "efficientnet",
                                    "vit", "rnn"])
def test_fashion_mnist_config_builds_its_model(family, monkeypatch):
  from imgrec import config
  monkeypatch.chdir(ROOT)
  monkeypatch.syspath_prepend(ROOT)  # configs import configs.common
  full = config.load(f"configs/fashion_mnist_{family}.py")
  assert full.data.source == "fashion_mnist" and models.family(full.model.name) == family
  classification.create_model(full, TEN)  # the model accepts the config's kwargs (traced at full size: too slow here)
  cfg = config.load(f"configs/fashion_mnist_{family}.py:quick=True")
  model = classification.create_model(cfg, TEN)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0],
                       jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32))
  assert out.shape == (2, 10) and cfg.steps == 300



@pytest.mark.parametrize("spec", ["fashion_mnist_cnn", "fashion_mnist_fast", "fashion_mnist_fast:quick=True",
                                  "fashion_mnist_best", "fashion_mnist_best:quick=True"])
def test_recipe_configs_validate_and_build(spec, monkeypatch):
  from imgrec import config
  from imgrec.data import augment
  monkeypatch.chdir(ROOT)
  monkeypatch.syspath_prepend(ROOT)
  name, _, arg = spec.partition(":")
  cfg = config.load(f"configs/{name}.py" + (f":{arg}" if arg else ""))
  config.validate(cfg)
  augment.parse(cfg.data.augment)
  model = classification.create_model(cfg, TEN)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0],
                       jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32))
  assert out.shape == (2, 10)
