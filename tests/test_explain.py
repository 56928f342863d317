"""Attribution methods: completeness of integrated gradients, Grad-CAM localisation,
attention rollout on a tiny self-contained transformer, and `imgrec explain` on a workdir."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgrec import explain, state as train_state, workdir as wd
from imgrec.errors import UserError
from tests.helpers import assert_png


def test_integrated_gradients_completeness(trained_workdir):
  _, info, model, state = wd.restore(trained_workdir)
  variables = train_state.variables(jax.device_get(state))
  mean, std = jnp.asarray(info["mean"]), jnp.asarray(info["std"])
  f = lambda x: model.apply(variables, ((x - mean) / std)[None], train=False)[0]
  from imgrec.data import sources
  from tests.conftest import tiny_config
  images, _ = sources.load(tiny_config().data).split("test").get(np.arange(2))
  ig = jax.jit(lambda x, t: explain.integrated_gradients(f, x, t, steps=256))
  for x in images.astype(np.float32) / 255:
    logits = f(x)
    target = int(jnp.argmax(logits))
    gap = float(logits[target] - f(jnp.zeros_like(x))[target])
    total = float(ig(x, target).sum())
    assert abs(gap) > 0.5  # a meaningful difference to explain
    assert total == pytest.approx(gap, rel=0.01), (total, gap)


class QuadrantModel(nn.Module):
  """Logits that depend on the top-left quadrant only: the input is masked before the conv."""
  @nn.compact
  def __call__(self, x, train=False):
    h, w = x.shape[1:3]
    mask = (jnp.arange(h)[:, None] < h // 2) & (jnp.arange(w)[None, :] < w // 2)
    x = x * mask[None, :, :, None]
    x = nn.relu(nn.Conv(8, (3, 3), name="features")(x))
    return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


def test_grad_cam_lights_the_quadrant_the_logit_depends_on():
  model = QuadrantModel()
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, 16, 16, 1))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)  # eager init compiles op by op: slow
  layer = explain.default_cam_layer(model, variables, x)
  assert layer == "features"
  shape = explain.check_layer(model, variables, x, layer)
  target = int(jnp.argmax(jax.jit(model.apply)(variables, x)[0]))
  cam = np.asarray(jax.jit(lambda v, x: explain.grad_cam(model, v, x, target, layer, shape))(variables, x[0]))
  assert cam.shape == (16, 16) and cam.max() > 0
  inside = cam[:7, :7].sum()  # the quadrant, less the conv's one-pixel spill at its edge
  outside = cam.sum() - cam[:9, :9].sum()
  assert outside < 0.01 * inside, (inside, outside)
  with pytest.raises(UserError, match="no layer named 'nope'.*features"):
    explain.check_layer(model, variables, x, "nope")


def test_attention_rollout_hand_case():
  # 1 layer, 1 head, class token + 4 patches; the class token attends only to patch 2 (token 3).
  a = np.eye(5)
  a[0] = [0, 0, 0, 1, 0]
  r = np.asarray(explain.attention_rollout([jnp.asarray(a)[None, None]]))
  np.testing.assert_allclose(r[0, 0], [0.5, 0, 0, 0.5, 0])  # 0.5 identity + 0.5 attention
  m = np.asarray(explain.rollout_map(jnp.asarray(r)))
  assert m.shape == (1, 2, 2) and m[0].argmax() == 2
  # two layers multiply: a second identical layer moves more mass onto patch 2
  r2 = np.asarray(explain.attention_rollout([jnp.asarray(a)[None, None]] * 2))
  np.testing.assert_allclose(r2[0, 0], [0.25, 0, 0, 0.75, 0])
  with pytest.raises(UserError, match="no attention weights"):
    explain.attention_rollout([])


class TinyViT(nn.Module):
  """Patchify (4x4) -> class token -> 2 attention blocks -> head on the class token."""
  @nn.compact
  def __call__(self, x, train=False):
    t = nn.Conv(16, (4, 4), strides=(4, 4), name="patch")(x)
    t = t.reshape(t.shape[0], -1, 16)
    cls = self.param("cls", nn.initializers.normal(1.0), (1, 1, 16))
    t = jnp.concatenate([jnp.broadcast_to(cls, (t.shape[0], 1, 16)), t], axis=1)
    for i in range(2):
      t = t + nn.MultiHeadDotProductAttention(num_heads=2, name=f"block{i}")(nn.LayerNorm()(t))
    return nn.Dense(3, name="head")(t[:, 0])


def test_attention_rollout_on_a_tiny_vit():
  model = TinyViT()
  x = jax.random.uniform(jax.random.PRNGKey(2), (1, 16, 16, 1))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)  # eager init compiles op by op: slow
  # one compiled call: the captured weights and the heat map the explainer draws
  weights, heat = jax.jit(lambda v, x: (explain.attention_weights(model, v, x),
                                        explain.rollout_image(model, v, x[0])))(variables, x)
  assert len(weights) == 2 and weights[0].shape == (1, 2, 17, 17)
  np.testing.assert_allclose(np.asarray(weights[1]).sum(-1), 1, atol=1e-5)
  r = np.asarray(explain.attention_rollout(weights))
  np.testing.assert_allclose(r.sum(-1), 1, atol=1e-5)  # still a distribution per token
  # by hand: heads averaged, half identity, multiplied layer 2 @ layer 1
  mix = [0.5 * np.eye(17) + 0.5 * np.asarray(w[0]).mean(0) for w in weights]
  np.testing.assert_allclose(np.asarray(r[0]), mix[1] @ mix[0], atol=1e-5)
  assert heat.shape == (16, 16) and float(heat.min()) >= 0
  # the class token's row over the 4x4 patch grid, upsampled to the image
  np.testing.assert_allclose(heat, jax.image.resize(np.asarray(r[0, 0, 1:]).reshape(4, 4), (16, 16), "bilinear"),
                             atol=1e-5)


def test_zoo_vit_exposes_attention_for_rollout():
  """The zoo's ViT sows its attention weights when asked (what `imgrec explain` reads for rollout), and
  computing them explicitly gives the same logits as the fused attention used otherwise."""
  from imgrec import models
  model = models.create("vit_ti4", 3, width=16, depth=2, heads=2, mlp_dim=32)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  fused, (weights, sown_logits, heat) = jax.jit(lambda v, x: (
      model.apply(v, x), (explain.attention_weights(model, v, x),
                          model.apply(v, x, mutable=["intermediates"])[0], explain.rollout_image(model, v, x[0]))))(
      variables, x)
  assert len(weights) == 2 and weights[0].shape == (2, 2, 5, 5)  # depth 2; heads 2; class token + 2x2 patches
  np.testing.assert_allclose(np.asarray(weights[0]).sum(-1), 1, atol=1e-5)
  np.testing.assert_allclose(np.asarray(sown_logits), np.asarray(fused), atol=1e-5)
  assert heat.shape == (8, 8) and float(heat.max()) > 0
  assert explain.attention_weights_shape(model, variables, x[:1])  # so explain_workdir picks rollout


def test_explain_cli(trained_workdir, tmp_path, capsys):
  from PIL import Image
  from imgrec import cli
  img = tmp_path / "digit.png"
  Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).resize((24, 24)).save(img)
  assert cli.main(["explain", "--workdir", trained_workdir, "--n", "2", "--ig-steps", "8"]) == 0
  out = os.path.join(trained_workdir, "explain")
  with open(os.path.join(out, "explain.json")) as f:
    summary = json.load(f)
  assert summary["method"] == "gradcam" and summary["layer"] == "bn1_0" and len(summary["files"]) == 2
  for path in summary["files"] + [summary["filters"]]:
    assert os.path.getsize(path) > 5000
    assert_png(path, 300, 200)
  loaded = explain.load_images([str(img)], (8, 8, 1))  # files are resized to the model's input
  assert loaded.shape == (1, 8, 8, 1) and loaded.dtype == np.uint8 and loaded.max() > 100
  assert cli.main(["explain", "--workdir", trained_workdir, "--images", str(tmp_path / "missing.png")]) == 2
  assert cli.main(["explain", "--workdir", trained_workdir, "--n", "2", "--layer", "fc"]) == 2
  assert "Grad-CAM needs an NHWC map" in capsys.readouterr().err
