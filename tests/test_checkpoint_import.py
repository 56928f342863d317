"""`imgrec import`: timm, Hugging Face and big_vision checkpoints give the logits of the reference model.

Nothing is downloaded: the references are timm / transformers models with random weights (every parameter,
BatchNorm statistic, layer scale and token randomised; eval mode), saved as their libraries save them, then
imported and run by imgrec. Check: max |imgrec - reference| <= 1e-4 x max |reference logit| (float32).
Images are small where the architecture allows; vit_small_patch16_224 runs at its 224 px.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.torch import save_file

from imgrec import checkpoint_import, export, models, parallel, transfer, workdir as wd
from imgrec.checkpoint_import import formats
from imgrec.data import sources
from imgrec.errors import UserError
from tests.conftest import tiny_config
from tests.helpers import ROOT, photo_folder
from tests.torch_reference import logits, randomise, state_dict, timm, transformers
from timm.models import _hub, vision_transformer  # after tests.torch_reference, which makes timm importable

TOL = 1e-4  # relative to the largest |logit|


def images(size, n=2, seed=1):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def check(spec, ref, x, **kw):
  """Imports `spec`, runs imgrec's model on `x` and compares with the reference logits `ref`; returns info."""
  values, info, rows = checkpoint_import.convert(spec, **kw)
  assert {r["status"] for r in rows} == {"loaded"}, [r for r in rows if r["status"] != "loaded"][:5]
  model = models.create(info["model"]["name"], info["num_classes"], **info["model"]["kwargs"])
  got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(traverse_util.unflatten_dict(values, sep="/"),
                                                                        x))
  err, scale = float(np.abs(got - ref).max()), float(np.abs(ref).max())
  print(f"{spec}: {info['layout']} -> {info['model']}: max |diff| {err:.2e}, max |logit| {scale:.3g}")
  assert np.abs(ref[0] - ref[1]).max() > 0.05 * scale  # the logits depend on the image
  assert got.shape == ref.shape and err <= TOL * scale, (err, scale)
  return info


# The image sizes and the 7 classes are those of the torchvision converter tests (tests/test_torchvision_*.py), so
# the compiled forward pass of the same zoo model is shared through the compile cache.
@pytest.mark.parametrize("name,size,calibrate", [("resnet50", 32, False), ("efficientnet_b0", 64, True)])
def test_timm_safetensors_match_timm(name, size, calibrate, tmp_path):
  x = images(size)
  ref = randomise(timm.create_model(name, pretrained=False, num_classes=7), x if calibrate else None)
  path = str(tmp_path / f"{name}.safetensors")
  save_file(state_dict(ref), path)
  info = check(path, logits(ref, x), x)
  assert info["model"] == {"name": name, "kwargs": {"stem": "imagenet"}} and info["num_classes"] == 7
  assert info["preprocessing"] is None  # a bare file: nothing says how it was trained


def test_timm_vit_variants_match_timm(tmp_path):
  """SigLIP-style attention pooling (no class token, timm's AttentionPoolLatent), and DeiT-III (layer scale, a
  position embedding of the patches only)."""
  x = images(32)
  for name, options, kwargs in (
      ("vit_tiny_patch16_224", dict(class_token=False, global_pool="map"), {"pool": "map"}),
      ("deit3_small_patch16_224", dict(embed_dim=192, num_heads=3), {"layer_scale": True, "pos_embed_class": False})):
    ref = randomise(timm.create_model(name, pretrained=False, num_classes=5, img_size=32, depth=2, **options))
    save_file(state_dict(ref), str(tmp_path / "vit.safetensors"))
    info = check(str(tmp_path / "vit.safetensors"), logits(ref, x), x)
    assert info["model"] == {"name": "vit_ti16", "kwargs": {"depth": 2, "gelu_approximate": False, **kwargs}}


@pytest.mark.slow
def test_timm_vit_and_deit_at_224_match_timm(tmp_path):
  """ViT-S/16 and DeiT-S/16 (one architecture: one compile of imgrec's vit_s16 for both) at full size."""
  x = images(224)
  model = models.create("vit_s16", 5, gelu_approximate=False)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  for name in ("vit_small_patch16_224", "deit_small_patch16_224"):
    ref = randomise(timm.create_model(name, pretrained=False, num_classes=5), seed=len(name))
    path = str(tmp_path / f"{name}.safetensors")
    save_file(state_dict(ref), path)
    values, info, _ = checkpoint_import.convert(path)
    assert info["model"] == {"name": "vit_s16", "kwargs": {"gelu_approximate": False}} and info["image_size"] == 224
    expected, got = logits(ref, x), np.asarray(forward(traverse_util.unflatten_dict(values, sep="/"), x))
    err, scale = float(np.abs(got - expected).max()), float(np.abs(expected).max())
    print(f"{name}: max |diff| {err:.2e}, max |logit| {scale:.3g}")
    assert err <= TOL * scale and np.abs(expected[0] - expected[1]).max() > 0.05 * scale


def test_timm_folder_with_config_convnext(tmp_path):
  """A timm model folder (config.json + model.safetensors, as timm pushes to the Hub): the preprocessing comes
  from its pretrained_cfg."""
  ref = randomise(timm.create_model("convnext_tiny", pretrained=False, num_classes=5))
  _hub.save_for_hf(ref, str(tmp_path / "cnx"), safe_serialization=True)
  x = images(64)
  info = check(str(tmp_path / "cnx"), logits(ref, x), x)
  assert info["model"] == {"name": "convnext_tiny", "kwargs": {}}
  pre = info["preprocessing"]
  assert pre["mean"] == [0.485, 0.456, 0.406] and pre["pp_eval"] == "decode|resize_small(235)|central_crop(224)"  # crop_pct 0.95


def test_hugging_face_vit_and_convnext(tmp_path):
  x = images(32)
  vit = randomise(transformers.ViTForImageClassification(transformers.ViTConfig(
      hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96, image_size=32, patch_size=8,
      num_labels=5)))
  vit.save_pretrained(tmp_path / "vit")
  transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
  info = check(str(tmp_path / "vit"), logits(vit, x), x)
  assert info["model"]["kwargs"] == {"width": 48, "depth": 2, "heads": 3, "mlp_dim": 96, "gelu_approximate": False,
                                     "ln_eps": 1e-12}
  assert info["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and info["preprocessing"]["image_size"] == 32
  backbone = transformers.ViTModel(vit.config)  # no classifier; a pooler nothing here reads
  backbone.save_pretrained(tmp_path / "backbone")
  _, info, rows = checkpoint_import.convert(str(tmp_path / "backbone"))
  assert info["counts"] == {"loaded": 30, "missing": 2, "ignored": 2} and info["num_classes"] is None
  assert {r["name"] for r in rows if r["status"] == "missing"} == {"params/head/kernel", "params/head/bias"}
  cnx = randomise(transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
      hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 2, 1], num_labels=5)))
  cnx.save_pretrained(tmp_path / "cnx")
  x = images(64)
  info = check(str(tmp_path / "cnx"), logits(cnx, x), x)
  assert info["model"]["kwargs"] == {"depths": [1, 1, 2, 1], "dims": [16, 24, 32, 40], "head_norm_eps": 1e-12}


def vit_repo_npz(sd, heads, big_vision=False):
  """A timm ViT state_dict in the ViT repository's .npz layout, or (`big_vision`) in big_vision's: image tower of
  a two-tower file, scanned blocks (one [depth, ...] array per parameter), its sub-module names, MAPHead_0."""
  blk = "Transformer/encoderblock/" if big_vision else "Transformer/encoderblock_{}/"
  mha, ln2, mlp = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision else (
      "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
  t = lambda k: sd[k].numpy()
  out = {"embedding/kernel": t("patch_embed.proj.weight").transpose(2, 3, 1, 0), "embedding/bias": t("patch_embed.proj.bias"),
         "Transformer/encoder_norm/scale": t("norm.weight"), "Transformer/encoder_norm/bias": t("norm.bias"),
         "head/kernel": t("head.weight").T, "head/bias": t("head.bias"),
         ("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"): t("pos_embed")}
  if "cls_token" in sd:
    out["cls"] = t("cls_token")
  if "attn_pool.latent" in sd:  # SigLIP's attention-pooling head
    dim = sd["attn_pool.latent"].shape[-1]
    split_heads = lambda w: w.T.reshape(dim, heads, dim // heads)
    out["MAPHead_0/probe"] = t("attn_pool.latent")
    for n, w, bias in (("query", t("attn_pool.q.weight"), t("attn_pool.q.bias")),
                       *zip(("key", "value"), np.split(t("attn_pool.kv.weight"), 2), np.split(t("attn_pool.kv.bias"), 2))):
      out[f"MAPHead_0/MultiHeadDotProductAttention_0/{n}/kernel"] = split_heads(w)
      out[f"MAPHead_0/MultiHeadDotProductAttention_0/{n}/bias"] = bias.reshape(heads, dim // heads)
    out["MAPHead_0/MultiHeadDotProductAttention_0/out/kernel"] = t("attn_pool.proj.weight").T.reshape(heads, -1, dim)
    out["MAPHead_0/MultiHeadDotProductAttention_0/out/bias"] = t("attn_pool.proj.bias")
    out["MAPHead_0/LayerNorm_0/scale"], out["MAPHead_0/LayerNorm_0/bias"] = t("attn_pool.norm.weight"), t("attn_pool.norm.bias")
    for r in range(2):
      out[f"MAPHead_0/MlpBlock_0/Dense_{r}/kernel"] = t(f"attn_pool.mlp.fc{r + 1}.weight").T
      out[f"MAPHead_0/MlpBlock_0/Dense_{r}/bias"] = t(f"attn_pool.mlp.fc{r + 1}.bias")
  blocks = []
  for i in range(sum(k.endswith("norm1.weight") for k in sd)):
    b, d = f"blocks.{i}.", {}
    dim = sd[b + "norm1.weight"].shape[0]
    for n, w, bias in zip(("query", "key", "value"), sd[b + "attn.qkv.weight"].chunk(3), sd[b + "attn.qkv.bias"].chunk(3)):
      d[f"{mha}/{n}/kernel"] = w.numpy().T.reshape(dim, heads, dim // heads)
      d[f"{mha}/{n}/bias"] = bias.numpy().reshape(heads, dim // heads)
    d[f"{mha}/out/kernel"] = t(b + "attn.proj.weight").T.reshape(heads, dim // heads, dim)
    d[f"{mha}/out/bias"] = t(b + "attn.proj.bias")
    for src, dst in (("norm1", "LayerNorm_0"), ("norm2", ln2)):
      d[f"{dst}/scale"], d[f"{dst}/bias"] = t(b + src + ".weight"), t(b + src + ".bias")
    for r in range(2):
      d[f"{mlp}/Dense_{r}/kernel"], d[f"{mlp}/Dense_{r}/bias"] = t(b + f"mlp.fc{r + 1}.weight").T, t(b + f"mlp.fc{r + 1}.bias")
    blocks.append(d)
  if big_vision:
    out.update({blk + k: np.stack([d[k] for d in blocks]) for k in blocks[0]})
    out = {"params/img/" + k: v for k, v in out.items()}
    out["params/txt/Embed_0/embedding"] = np.zeros((7, 4), np.float32)  # the other tower
  else:
    out.update({blk.format(i) + k: v for i, d in enumerate(blocks) for k, v in d.items()})
  return out


@pytest.mark.parametrize("pool", ["token", "avg", "map"])
def test_big_vision_npz_matches_timm(pool, tmp_path):
  """The .npz layouts are checked by timm's own reader (`_load_weights`): it loads the file written here back into
  a timm model bit for bit, then imgrec imports it. GELU is tanh there, as in the Flax models that wrote them.
  "token": the ViT repository's layout (class token); "avg" (GAP) and "map" (attention pooling, as SigLIP): the
  image tower of a big_vision two-tower file without class token, with scanned blocks."""
  big_vision = pool != "token"
  options = dict(img_size=32, num_classes=5, act_layer="gelu_tanh", embed_dim=96, depth=2, num_heads=3)
  if big_vision:
    options.update(class_token=False, global_pool=pool, fc_norm=False)
  ref = randomise(timm.create_model("vit_small_patch16_224", pretrained=False, **options))
  path = str(tmp_path / "vit.npz")
  np.savez(path, **vit_repo_npz(state_dict(ref), 3, big_vision))
  back = timm.create_model("vit_small_patch16_224", pretrained=False, **options)
  vision_transformer._load_weights(back, path)
  assert all(torch.equal(v, state_dict(back)[k]) for k, v in state_dict(ref).items())
  x = images(32)
  if big_vision:
    with pytest.raises(UserError, match=r"two-tower file \(img, txt\): name the image tower, .*vit\.npz:img"):
      checkpoint_import.convert(path)
  info = check(path + (":img" if big_vision else ""), logits(ref, x), x)
  assert info["model"]["kwargs"] == {"width": 96, "depth": 2, "heads": 3, "mlp_dim": 384, **(
      {"pool": {"avg": "gap", "map": "map"}[pool]} if big_vision else {})}  # big_vision's GELU is tanh: the default
  assert info["preprocessing"]["mean"] == [0.5] * 3
  if not big_vision:  # AugReg's ImageNet-21k files: pre_logits (Dense + tanh) between the pooled token and the head
    rng = np.random.default_rng(0)
    arrays = dict(np.load(path), **{"pre_logits/kernel": rng.normal(0, 0.1, (96, 16)).astype(np.float32),
                                    "pre_logits/bias": rng.normal(0, 0.1, 16).astype(np.float32),
                                    "head/kernel": rng.normal(0, 0.25, (16, 5)).astype(np.float32)})
    np.savez(tmp_path / "pre_logits.npz", **arrays)
    with torch.no_grad():  # timm's pooled, normed class token, then the two layers by hand
      pooled = ref.forward_head(ref.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())),
                                pre_logits=True).numpy()
    expected = np.tanh(pooled @ arrays["pre_logits/kernel"] + arrays["pre_logits/bias"]) @ arrays["head/kernel"] \
        + arrays["head/bias"]
    info = check(str(tmp_path / "pre_logits.npz"), expected, x)
    assert info["model"]["kwargs"]["representation_size"] == 16


@pytest.fixture(scope="module")
def small_vit(tmp_path_factory):
  """A small random timm ViT (ViT-Ti width, one block, patch 8, 32 px, 5 classes) as a timm model folder;
  (folder, timm model)."""
  folder = str(tmp_path_factory.mktemp("small_vit") / "vit")
  ref = randomise(timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=5, img_size=32,
                                    patch_size=8, embed_dim=192, depth=1, num_heads=3))
  _hub.save_for_hf(ref, folder, safe_serialization=True)
  return folder, ref


def test_bad_inputs_say_what_is_wrong(small_vit, tmp_path):
  folder, _ = small_vit
  weights = os.path.join(folder, "model.safetensors")
  with pytest.raises(UserError, match=r"is a timm vit checkpoint, not a resnet \(--model resnet50\)"):
    checkpoint_import.convert(weights, model="resnet50")
  data = open(weights, "rb").read()
  (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 2])
  with pytest.raises(UserError, match=r"cut\.safetensors is truncated or damaged"):
    checkpoint_import.convert(str(tmp_path / "cut.safetensors"))
  np.savez(tmp_path / "full.npz", **{"embedding/kernel": np.zeros((4, 4, 3, 8), np.float32)})
  (tmp_path / "cut.npz").write_bytes((tmp_path / "full.npz").read_bytes()[:200])
  with pytest.raises(UserError, match=r"cut\.npz is a damaged or truncated zip"):
    checkpoint_import.convert(str(tmp_path / "cut.npz"))
  save_file({"encoder.conv_a.weight": torch.zeros(2, 3), "encoder.conv_b.weight": torch.zeros(2)},
            str(tmp_path / "other.safetensors"))
  with pytest.raises(UserError, match=r"a key layout imgrec does not know \(first keys: encoder\.conv_a\.weight, "
                     r"encoder\.conv_b\.weight\)"):
    checkpoint_import.convert(str(tmp_path / "other.safetensors"))
  np.savez(tmp_path / "pickled.npz", **{"embedding/kernel": np.array([{"code": 1}], dtype=object)})
  with pytest.raises(UserError, match=r"holds pickled Python objects; imgrec never unpickles"):
    checkpoint_import.convert(str(tmp_path / "pickled.npz"))
  sd = dict(state_dict(small_vit[1]), **{"blocks.0.attn.qkv.weight": torch.zeros(570, 192)})
  with pytest.raises(UserError, match=r"1 wrong shape \(params/encoder_layer_0/self_attention/in_proj/kernel \(192, 576\) "
                     r"<- blocks\.0\.attn\.qkv\.weight \(570, 192\)\)"):
    checkpoint_import.convert(formats.from_arrays(sd, "sd"))
  with pytest.raises(UserError, match="not found"):
    checkpoint_import.convert(str(tmp_path / "none.npz"))


def test_bfloat16_safetensors_load_as_float32(small_vit, tmp_path):
  sd = {k: v.to(torch.bfloat16) for k, v in state_dict(small_vit[1]).items()}
  save_file(sd, str(tmp_path / "bf16.safetensors"))
  values, info, _ = checkpoint_import.convert(str(tmp_path / "bf16.safetensors"))
  assert info["counts"] == {"loaded": 20} and {v.dtype for v in values.values()} == {np.dtype(np.float32)}
  np.testing.assert_array_equal(values["params/head/kernel"], sd["head.weight"].float().numpy().T)


def test_cli_import_writes_a_folder_and_refuses_an_existing_one(small_vit, tmp_path):
  folder, ref = small_vit
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "imgrec", "import", folder, "--out", str(tmp_path / "w")]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "timm vit checkpoint -> imgrec vit_ti8: 20 tensors loaded" in proc.stdout
  assert ("--config.model.name=vit_ti8 --config.model.kwargs.depth=1 --config.model.kwargs.gelu_approximate=False "
          f"--config.transfer.init_from={tmp_path / 'w'}") in proc.stdout
  info = json.loads((tmp_path / "w" / "import.json").read_text())
  report = json.loads((tmp_path / "w" / "import_report.json").read_text())
  assert info["counts"] == {"loaded": 20} and len(report) == 20 and info["num_classes"] == 5
  with np.load(tmp_path / "w" / "params.npz") as f:
    np.testing.assert_array_equal(f["params/head/kernel"], state_dict(ref)["head.weight"].numpy().T)
  assert checkpoint_import.describe(str(tmp_path / "w"))["model"] == info["model"]  # what the recipes read
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr


def test_fine_tuning_recipes_take_the_model_from_the_checkpoint(small_vit, monkeypatch):
  from imgrec import config
  monkeypatch.chdir(ROOT)
  monkeypatch.syspath_prepend(ROOT)  # configs import configs.common
  cfg = config.load(f"configs/finetune_vit_b16.py:init={small_vit[0]},source=folder:/data/x,size=64")
  assert (cfg.model.name, cfg.model.kwargs.to_dict()) == ("vit_ti8", {"depth": 1, "gelu_approximate": False})
  assert cfg.transfer.init_from == small_vit[0] and cfg.data.pp_eval == "decode|resize(64)" and cfg.steps == 500
  with pytest.raises(UserError, match="is a vit_ti8 checkpoint; this recipe is for convnext_"):
    config.load(f"configs/finetune_convnext_t.py:init={small_vit[0]}")


def test_init_from_a_checkpoint_directly(small_vit, tmp_path, capsys):
  """transfer.init_from=<timm folder> for a 3-class run at 16 px: the position embedding resampled from 4x4 to 2x2
  patches, the head re-initialised, every other parameter the checkpoint's; the report printed and saved; the
  run normalises as the checkpoint's config says (dataset.json). (The whole import -> train -> eval path by the
  CLI: `python scripts/bench_import.py --finetune`, BENCHMARKS.md.)"""
  folder, ref = small_vit
  photo_folder(tmp_path / "photos", n=12, size=(20, 40))
  cfg = tiny_config(batch_size=4)
  cfg.data.source = f"folder:{tmp_path / 'photos'}"
  cfg.data.image_size = 16
  cfg.model.name = "vit_ti8"
  cfg.model.kwargs = {"depth": 1, "gelu_approximate": False}
  cfg.transfer.init_from = folder
  info = wd.data_info(cfg, sources.load(cfg.data))
  # vit_small_patch16_224's pretrained_cfg (AugReg) says mean = std = 0.5, not ImageNet's statistics
  assert info["mean"] == [0.5] * 3 and info["checkpoint_preprocessing"]["from"].startswith("config.json")
  state = transfer.init_from(wd.initial_state(cfg, info, parallel.make_mesh()), cfg.transfer,
                             workdir=str(tmp_path / "ft"))
  out = capsys.readouterr().out
  assert "transfer:   resized          params/pos_embedding (1, 17, 192) -> (1, 5, 192)" in out
  report = json.loads((tmp_path / "ft" / "transfer.json").read_text())
  assert report["counts"] == {"loaded": 17, "resized": 1, "re-initialised": 2, "missing": 0, "wrong shape": 0,
                              "unexpected": 0}
  np.testing.assert_array_equal(np.asarray(state.params["encoder_ln"]["scale"]), state_dict(ref)["norm.weight"].numpy())
  assert state.params["head"]["kernel"].shape == (192, 3)


def test_an_import_folder_is_a_run(small_vit, tmp_path):
  """`imgrec import` writes a folder that restores as a run (serve, eval, export, explain take it): its zoo model
  and the checkpoint's weights, its own class names (timm's label_names here) and recorded preprocessing."""
  folder, ref = small_vit
  labelled = tmp_path / "labelled"
  shutil.copytree(folder, labelled)
  cfg = json.loads((labelled / "config.json").read_text())
  (labelled / "config.json").write_text(json.dumps({**cfg, "label_names": ["ant", "bee", "cat", "dog", "eel"]}))
  checkpoint_import.import_checkpoint(str(labelled), str(tmp_path / "w"))
  run = wd.restore(str(tmp_path / "w"), params_only=True)
  assert run.info["class_names"] == ["ant", "bee", "cat", "dog", "eel"] and run.info["image_shape"] == [32, 32, 3]
  assert run.info["mean"] == [0.5] * 3 and run.info["pp_eval"].startswith("decode|resize_small(")
  x = images(32)
  got = np.asarray(run.model.apply(run.variables, x, train=False))
  np.testing.assert_allclose(got, logits(ref, x), atol=TOL * float(np.abs(got).max()))
  meta = export.export_workdir(str(tmp_path / "w"), str(tmp_path / "vit.zip"), platforms=("cpu",))
  assert meta["class_names"] == run.info["class_names"] and meta["pp_eval"] == run.info["pp_eval"]
  checkpoint_import.import_checkpoint(folder, str(tmp_path / "plain"))  # no names in the checkpoint: class_i
  assert wd.restore(str(tmp_path / "plain"), params_only=True).info["class_names"] == [f"class_{i}" for i in range(5)]


def test_import_mistakes_are_one_line_and_leave_nothing(small_vit, tmp_path):
  folder, _ = small_vit
  with pytest.raises(UserError, match=r"--model vit_s8 is a ViT 384 wide with patch 8; this checkpoint is 192 wide "
                     r"with patch 8: give --model vit_ti8"):
    checkpoint_import.import_checkpoint(folder, str(tmp_path / "wrong_size"), model="vit_s8")
  assert not (tmp_path / "wrong_size").exists()  # a failed import leaves no empty --out behind
  torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), tmp_path / "whole.pth")
  with pytest.raises(UserError) as e:
    checkpoint_import.import_checkpoint(str(tmp_path / "whole.pth"), str(tmp_path / "w"))
  assert "\n" not in str(e.value) and "torch.nn.modules.container.Sequential" in str(e.value)
  assert "torch.save(model.state_dict()" in str(e.value) and not (tmp_path / "w").exists()
