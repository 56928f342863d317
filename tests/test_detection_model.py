"""The FCOS detector: static output shapes that line up with `points`, the class prior, bf16 compute, training
on every backbone family's features (a tiny ConvNeXt and ViT here; the maps themselves: tests/test_features.py),
and a classifier checkpoint (timm ConvNeXt-T, ViT-S) loaded into its backbone by transfer.prefix."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.torch import save_file

from imgrec import config, parallel, transfer, workdir as wd
from imgrec.checkpoint_import import convert
from imgrec.errors import UserError
from imgrec.models import layers
from imgrec.state import variables
from imgrec.tasks.detection import loss, model
from tests.torch_reference import randomise, state_dict, timm

LEVELS = (3, 4, 5, 6)
HEAD = {"fpn_channels": 16, "head_convs": 1, "levels": LEVELS}


@pytest.fixture(scope="module")
def tiny():
  m = model.create("tiny", 3, head=HEAD)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 72, 56, 3)), jnp.float32)
  # The non-partitionable threefry compiles this init in a quarter of the time (cold: ~7 s against ~26 s).
  with jax.threefry_partitionable(False):
    variables = jax.jit(m.init)(jax.random.key(0), x)
  return m, variables, x


def test_outputs_are_flat_over_levels_and_match_points(tiny):
  m, variables, x = tiny
  out = jax.jit(m.apply)(variables, x)
  # 72x56 at strides 8, 16, 32, 64: ceil sizes 9x7, 5x4, 3x2, 2x1
  p = 9 * 7 + 5 * 4 + 3 * 2 + 2 * 1
  assert out["logits"].shape == (2, p, 3) and out["ltrb"].shape == (2, p, 4) and out["centerness"].shape == (2, p)
  table = model.points(72, 56, LEVELS)
  np.testing.assert_array_equal(out["points"][1], table)
  assert table[0].tolist() == [4, 4, 8] and table[63].tolist() == [8, 8, 16] and table[-1].tolist() == [32, 96, 64]
  assert (np.asarray(out["ltrb"]) > 0).all()
  # the class-prior bias: every class starts near probability 0.01
  np.testing.assert_allclose(jax.nn.sigmoid(out["logits"]).mean(), 0.01, rtol=0.2)
  names = set(variables["params"])
  assert {"lateral3", "lateral5", "fpn4", "extra6", "scale6", "backbone"} <= names and "extra7" not in names


def test_bfloat16_compute_keeps_float32_params_and_outputs(tiny):
  _, variables, x = tiny
  m16 = model.create("tiny", 3, head=HEAD, dtype=jnp.bfloat16)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(jax.eval_shape(m16.init, jax.random.key(0), x)))
  out = jax.eval_shape(m16.apply, variables, x)  # shapes and dtypes only: a second compile costs seconds
  assert all(a.dtype == jnp.float32 for a in out.values())
  # the convolutions do run in bfloat16
  _, inter = jax.eval_shape(lambda v, x: m16.apply(v, x, capture_intermediates=True), variables, x)
  assert inter["intermediates"]["fpn3"]["__call__"][0].dtype == jnp.bfloat16


# Two digits-like boxes per image, one padding row (the images are 64x64).
BOXES = np.float32([[[4, 6, 30, 40], [34, 20, 60, 50], [0, 0, 0, 0]], [[10, 10, 50, 36], [0, 0, 0, 0], [0, 0, 0, 0]]])
TARGETS = {"boxes": BOXES, "classes": np.int32([[1, 2, 0], [0, 0, 0]]), "box_mask": BOXES[..., 2] > 0}


def test_image_sizes_off_the_backbone_grid_are_refused():
  with pytest.raises(UserError, match="stride-8 map is 9x9 for 72x76 images, where FCOS needs ceil"):
    jax.eval_shape(model.create("convnext_tiny", 3, head=HEAD, depths=(1, 1, 1, 1), width=8).init,
                   jax.random.key(0), jnp.zeros((1, 72, 76, 3)))


@pytest.mark.slow  # ~25 s of CPU each: the detector's init and gradient compiles
@pytest.mark.parametrize("arch", ["convnext", "vit"])
def test_imported_backbone_loads_by_prefix_and_the_detector_trains(arch, tmp_path, monkeypatch):
  """A timm ConvNeXt-T / ViT-S (random weights, narrowed and shallow) saved as safetensors, imported, given as
  --config.transfer.init_from with --config.transfer.prefix=backbone/ to the detection_digits recipe on that model:
  every backbone parameter the classifier has is loaded (the ViT's position embedding resized from its 2x2 to the
  detector's 4x4 patch grid), the classifier's head is unexpected, and what only the detector has stays fresh
  (missing). Then six SGD steps on one batch: the loss falls, and every backbone parameter the levels use gets a
  gradient."""
  monkeypatch.setattr(layers, "IMPL", "lax")  # a third of im2col's compile time here; test_layers: same results
  if arch == "convnext":
    ref = timm.create_model("convnext_tiny", pretrained=False, num_classes=5, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
  else:
    ref = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=5, img_size=32, depth=1,
                            mlp_ratio=0.25)
  path = str(tmp_path / f"{arch}.safetensors")
  save_file(state_dict(randomise(ref)), path)
  _, info, _ = convert(path)
  cfg = config.load("configs/detection_digits.py")
  cfg.model.name = info["model"]["name"]
  cfg.model.kwargs = info["model"]["kwargs"]
  cfg.detection.fpn_channels, cfg.detection.head_convs = 8, 1
  cfg.transfer.init_from, cfg.transfer.prefix = path, "backbone/"
  data = {"class_names": [str(d) for d in range(10)], "image_shape": [64, 64, 3], "mean": [0.5] * 3,
          "std": [0.25] * 3, "num_train": 64}
  with jax.threefry_partitionable(False):  # compiles the init in a third of the time (as the `tiny` fixture)
    state = transfer.init_from(wd.initial_state(cfg, data, parallel.make_mesh()), cfg.transfer,
                               workdir=str(tmp_path / "run"))
  report = json.loads((tmp_path / "run" / "transfer.json").read_text())
  status = {}
  for row in report["rows"]:
    status.setdefault(row["status"], set()).add(row["name"])
  every = set(wd.flatten(jax.device_get(variables(state))))
  backbone = {n for n in every if n.split("/")[1] == "backbone"}
  head = {"convnext": {"head_ln", "head"}, "vit": {"head"}}[arch]
  added = {"convnext": tuple(f"stage{i}_out_ln" for i in range(1, 5)), "vit": ("pyramid",)}[arch]
  own = {n for n in backbone if n.split("/")[2].startswith(added)}
  resized = {"params/backbone/pos_embedding"} if arch == "vit" else set()
  assert status["loaded"] == backbone - own - resized and status.get("resized", set()) == resized
  assert {n.split("/")[1] for n in status["unexpected"]} == head
  assert status["missing"] == own | (every - backbone)
  assert not status.get("wrong shape")
  stem = {"convnext": ("stem_conv", "stem.0.weight"), "vit": ("conv_proj", "patch_embed.proj.weight")}[arch]
  np.testing.assert_array_equal(np.asarray(state.params["backbone"][stem[0]]["kernel"]),
                                state_dict(ref)[stem[1]].numpy().transpose(2, 3, 1, 0))

  m = model.create(cfg.model.name, 10, head={k: cfg.detection[k] for k in model.HEAD_KEYS}, **cfg.model.kwargs)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 64, 64, 3)), jnp.float32)

  @jax.jit
  def step(params):
    value, grads = jax.value_and_grad(lambda p: loss.fcos_loss(m.apply({"params": p}, x, train=True), TARGETS)[0])(
        params)
    return jax.tree.map(lambda p, g: p - 0.05 * g, params, grads), value, grads
  params, losses = state.params, []
  for _ in range(6):
    params, value, grads = step(params)
    losses.append(float(value))
  assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], losses
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  norms = {"/".join(str(k.key) for k in path): float(jnp.abs(g).max())
           for path, g in jax.tree_util.tree_leaves_with_path(grads["backbone"])}
  unused = ("pyramid/s4_", "stage1_out_ln/")  # the stride-4 maps' own layers: the levels start at stride 8
  assert all(v > 0 for n, v in norms.items() if not n.startswith(unused)), norms
  assert any(n.startswith("pyramid/s8_") for n in norms) == (arch == "vit")


def test_backbone_without_features_is_refused():
  with pytest.raises(UserError, match="'vgg11' gives no multi-scale features"):
    model.create("vgg11", 3)
