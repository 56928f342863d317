"""Two-tower imports against the real thing, offline: random-weight Hugging Face SiglipModel and CLIPModel (small
configs, save_pretrained) and a big_vision-layout SigLIP .npz written from the same random reference; imgrec's
image and text embeddings and logits within 1e-4 relative of Hugging Face's, and the import folder's tokenizer
giving Hugging Face's ids."""
import numpy as np
import pytest

from imgrec import checkpoint_import, cli, models, tokenizer
from imgrec.checkpoint_import import formats
from imgrec.errors import UserError
from imgrec.models import two_tower
from imgrec.tasks.image_text import zeroshot
from tests import text_helpers as th

ref = pytest.importorskip("tests.torch_reference")
torch, transformers = ref.torch, ref.transformers

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)
TEXT = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=12)


def siglip_reference(vocab=64):
  cfg = transformers.SiglipConfig(vision_config=VISION, text_config=dict(TEXT, hidden_size=32, vocab_size=vocab,
                                                                         projection_size=32))
  return ref.randomise(transformers.SiglipModel(cfg)).eval()


def clip_reference(vocab):
  cfg = transformers.CLIPConfig(vision_config=VISION, text_config=dict(TEXT, vocab_size=vocab, eos_token_id=vocab - 1),
                                projection_dim=16)
  return ref.randomise(transformers.CLIPModel(cfg)).eval()


def hf_outputs(model, x, ids):
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), input_ids=torch.from_numpy(ids))
  return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


def nest(values):
  """{"params/a/b": array} -> {"params": {"a": {"b": array}}}."""
  params = {}
  for name, v in values.items():
    node = params
    *path, leaf = name.split("/")[1:]
    for p in path:
      node = node.setdefault(p, {})
    node[leaf] = v
  return {"params": params}


def imgrec_outputs(values, info, x, ids):
  model = models.create(info["model"]["name"], info["num_classes"], **info["model"]["kwargs"])
  variables = nest(values)
  zi = np.asarray(model.apply(variables, x, method="embed_image"))
  zt = np.asarray(model.apply(variables, ids, method="embed_text"))
  logits = np.asarray(model.apply(variables, zi, zt, method="scores"))
  return np.asarray(two_tower.normalize(zi)), np.asarray(two_tower.normalize(zt)), logits


def close(mine, theirs):
  for a, b in zip(mine, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def inputs(vocab, eos=None, n=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  ids = rng.integers(0, vocab - 2, size=(n, 12))
  if eos is not None:  # an end-of-text at a different place in each text, padding after it
    for i, at in enumerate(rng.choice(np.arange(3, 12), n, replace=False)):
      ids[i, at:] = eos
  return x, ids.astype(np.int64)


def test_hf_siglip_matches(tmp_path):
  model = siglip_reference()
  (tmp_path / "m").mkdir()
  th.sentencepiece_model(str(tmp_path / "m"))
  model.save_pretrained(tmp_path / "m")
  transformers.SiglipTokenizer(vocab_file=str(tmp_path / "m" / "spiece.model"), model_max_length=12).save_pretrained(
      tmp_path / "m")
  x, ids = inputs(64)
  values, info, _ = checkpoint_import.convert(str(tmp_path / "m"))
  assert info["model"]["name"] == "siglip_b16" and info["num_classes"] == 32
  close(imgrec_outputs(values, info, x, ids), hf_outputs(model, x, ids))
  # the import folder: weights + its tokenizer with the conventions as data, ids as Hugging Face's
  info, _ = checkpoint_import.import_checkpoint(str(tmp_path / "m"), str(tmp_path / "w"))
  tok = tokenizer.load(str(tmp_path / "w"))
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "m"))
  want = hf_tok(th.PROMPTS, padding="max_length", max_length=12, truncation=True).input_ids
  np.testing.assert_array_equal(tok.encode(th.PROMPTS).ids, want)
  assert tok.conv["canonicalize"] and tok.conv["lower"] and tok.max_len == 12


def test_hf_clip_matches(tmp_path):
  n = th.clip_vocab(str(tmp_path))
  model = clip_reference(n)
  model.save_pretrained(tmp_path / "m")
  transformers.CLIPTokenizer.from_pretrained(str(tmp_path)).save_pretrained(tmp_path / "m")
  x, ids = inputs(n, eos=n - 1)
  values, info, _ = checkpoint_import.convert(str(tmp_path / "m"))
  assert info["model"]["name"] == "clip_b32" and info["num_classes"] == 16
  assert info["model"]["kwargs"]["text"]["eos_id"] == n - 1
  close(imgrec_outputs(values, info, x, ids), hf_outputs(model, x, ids))
  checkpoint_import.import_checkpoint(str(tmp_path / "m"), str(tmp_path / "w"))
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "m"))
  want = hf_tok(th.PROMPTS, padding="max_length", max_length=12, truncation=True).input_ids
  np.testing.assert_array_equal(tokenizer.load(str(tmp_path / "w")).encode(th.PROMPTS).ids, want)


def big_vision_npz(model, path, heads=(4, 2)):
  """The random SiglipModel in big_vision's two-tower .npz layout: img/ with unscanned blocks, txt/ scanned (one
  stacked [depth, ...] array per parameter), MAPHead_0, t and b; under params/ as big_vision saves."""
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  out = {"t": sd["logit_scale"].reshape(1), "b": sd["logit_bias"].reshape(1)}

  def block(p, h):
    d = {}
    dim = sd[p + "layer_norm1.weight"].shape[0]
    for n, x in zip(("query", "key", "value"), "qkv"):
      d[f"MultiHeadDotProductAttention_0/{n}/kernel"] = sd[f"{p}self_attn.{x}_proj.weight"].T.reshape(dim, h, -1)
      d[f"MultiHeadDotProductAttention_0/{n}/bias"] = sd[f"{p}self_attn.{x}_proj.bias"].reshape(h, -1)
    d["MultiHeadDotProductAttention_0/out/kernel"] = sd[p + "self_attn.out_proj.weight"].T.reshape(h, -1, dim)
    d["MultiHeadDotProductAttention_0/out/bias"] = sd[p + "self_attn.out_proj.bias"]
    for src, dst in (("layer_norm1", "LayerNorm_0"), ("layer_norm2", "LayerNorm_1")):
      d[f"{dst}/scale"], d[f"{dst}/bias"] = sd[p + src + ".weight"], sd[p + src + ".bias"]
    for r in range(2):
      d[f"MlpBlock_0/Dense_{r}/kernel"] = sd[f"{p}mlp.fc{r + 1}.weight"].T
      d[f"MlpBlock_0/Dense_{r}/bias"] = sd[f"{p}mlp.fc{r + 1}.bias"]
    return d

  v = "vision_model."
  out["img/embedding/kernel"] = sd[v + "embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0)
  out["img/embedding/bias"] = sd[v + "embeddings.patch_embedding.bias"]
  out["img/pos_embedding"] = sd[v + "embeddings.position_embedding.weight"][None]
  for i in range(2):
    out.update({f"img/Transformer/encoderblock_{i}/{k}": a for k, a in block(f"{v}encoder.layers.{i}.", heads[0]).items()})
  out["img/Transformer/encoder_norm/scale"] = sd[v + "post_layernorm.weight"]
  out["img/Transformer/encoder_norm/bias"] = sd[v + "post_layernorm.bias"]
  h, dim = v + "head.", sd[v + "head.probe"].shape[-1]
  out["img/MAPHead_0/probe"] = sd[h + "probe"]
  for n, w, b in zip(("query", "key", "value"), np.split(sd[h + "attention.in_proj_weight"], 3),
                     np.split(sd[h + "attention.in_proj_bias"], 3)):
    out[f"img/MAPHead_0/MultiHeadDotProductAttention_0/{n}/kernel"] = w.T.reshape(dim, heads[0], -1)
    out[f"img/MAPHead_0/MultiHeadDotProductAttention_0/{n}/bias"] = b.reshape(heads[0], -1)
  out["img/MAPHead_0/MultiHeadDotProductAttention_0/out/kernel"] = \
      sd[h + "attention.out_proj.weight"].T.reshape(heads[0], -1, dim)
  out["img/MAPHead_0/MultiHeadDotProductAttention_0/out/bias"] = sd[h + "attention.out_proj.bias"]
  out["img/MAPHead_0/LayerNorm_0/scale"], out["img/MAPHead_0/LayerNorm_0/bias"] = \
      sd[h + "layernorm.weight"], sd[h + "layernorm.bias"]
  for r in range(2):
    out[f"img/MAPHead_0/MlpBlock_0/Dense_{r}/kernel"] = sd[f"{h}mlp.fc{r + 1}.weight"].T
    out[f"img/MAPHead_0/MlpBlock_0/Dense_{r}/bias"] = sd[f"{h}mlp.fc{r + 1}.bias"]
  t = "text_model."
  out["txt/Embed_0/embedding"] = sd[t + "embeddings.token_embedding.weight"]
  out["txt/pos_embedding"] = sd[t + "embeddings.position_embedding.weight"][None]
  blocks = [block(f"{t}encoder.layers.{i}.", heads[1]) for i in range(2)]
  out.update({f"txt/Encoder_0/encoderblock/{k}": np.stack([d[k] for d in blocks]) for k in blocks[0]})
  out["txt/Encoder_0/encoder_norm/scale"] = sd[t + "final_layer_norm.weight"]
  out["txt/Encoder_0/encoder_norm/bias"] = sd[t + "final_layer_norm.bias"]
  out["txt/head/kernel"], out["txt/head/bias"] = sd[t + "head.weight"].T, sd[t + "head.bias"]
  np.savez(path, **{"params/" + k: np.ascontiguousarray(a, np.float32) for k, a in out.items()})


def test_big_vision_siglip_npz_matches(tmp_path, capsys):
  model = siglip_reference()
  # big_vision's Flax GELU is the tanh form: the reference's must be too (SigLIP's gelu_pytorch_tanh)
  assert model.config.vision_config.hidden_act == "gelu_pytorch_tanh"
  path = str(tmp_path / "siglip.npz")
  big_vision_npz(model, path, heads=(4, 2))
  x, ids = inputs(64)
  values, info, rows = checkpoint_import.convert(path)
  assert info["layout"] == "big_vision two_tower" and info["num_classes"] == 32
  assert all(r["status"] == "loaded" for r in rows)
  close(imgrec_outputs(values, info, x, ids), hf_outputs(model, x, ids))
  # the image tower alone still imports as a ViT classifier backbone
  _, img_info, _ = checkpoint_import.convert(path + ":img")
  assert img_info["model"]["kwargs"]["pool"] == "map"
  # ... which cannot do zero-shot (nor be served): one line naming the whole file's import
  checkpoint_import.import_checkpoint(path + ":img", str(tmp_path / "img"))
  with pytest.raises(UserError, match=r"only the 'img' tower .*need both towers: import the whole file"):
    checkpoint_import.run_files(str(tmp_path / "img"))
  assert formats.read(path).shapes["t"] == (1,)
  # `imgrec import` without a tokenizer beside the file: imported, and it says zero-shot needs one
  assert cli.main(["import", path, "--out", str(tmp_path / "w")]) in (0, None)
  assert "no tokenizer file beside the checkpoint" in capsys.readouterr().out
  with pytest.raises(UserError, match="has no text.json"):
    tokenizer.load(str(tmp_path / "w"))
  th.sentencepiece_model(str(tmp_path))  # with its spiece.model beside it: SigLIP's conventions
  checkpoint_import.import_checkpoint(path, str(tmp_path / "w2"))
  conv = tokenizer.load(str(tmp_path / "w2")).conv
  assert conv["lower"] and conv["canonicalize"] and conv["eos_id"] == conv["pad_id"] == 1 and conv["max_len"] == 12


def test_zero_shot_matches_hf_clip_prompts(tmp_path):
  """Zero-shot from the import folder (its tokenizer, its scale) equals CLIPModel's logits on the same prompts; two
  templates give the re-normalised mean of their text embeddings."""
  n = th.clip_vocab(str(tmp_path))
  model = clip_reference(n)
  model.save_pretrained(tmp_path / "m")
  hf_tok = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
  hf_tok.save_pretrained(tmp_path / "m")
  info, _ = checkpoint_import.import_checkpoint(str(tmp_path / "m"), str(tmp_path / "w"))
  with np.load(tmp_path / "w" / "params.npz") as f:
    variables = nest({k: f[k] for k in f.files})
  ours = models.create(info["model"]["name"], info["num_classes"], **info["model"]["kwargs"])
  tok = tokenizer.load(str(tmp_path / "w"))
  names, templates = ["cat", "Dog!", "café"], ["a photo of a {}.", "a drawing of the {}"]
  x, _ = inputs(n)
  zi = np.asarray(ours.apply(variables, x))

  def hf_text(template):
    ids = hf_tok([template.format(c) for c in names], padding="max_length", max_length=12).input_ids
    with torch.no_grad():
      out = model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), input_ids=torch.tensor(ids))
    return out.text_embeds.numpy(), out.image_embeds.numpy(), out.logits_per_image.numpy()

  clf = zeroshot.classifier(ours, variables, tok, names, templates[:1])
  np.testing.assert_allclose(zeroshot.logits(clf, zi), hf_text(templates[0])[2], rtol=1e-4, atol=1e-4)
  probs = zeroshot.probabilities(clf, zi)
  np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)  # CLIP: softmax over the labels
  (t0, img, _), (t1, _, _) = hf_text(templates[0]), hf_text(templates[1])
  mean = (t0 + t1) / 2
  mean /= np.linalg.norm(mean, axis=-1, keepdims=True)
  clf2 = zeroshot.classifier(ours, variables, tok, names, templates)
  np.testing.assert_allclose(clf2.weights, mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(zeroshot.logits(clf2, zi), model.logit_scale.exp().item() * img @ mean.T, rtol=1e-4,
                             atol=1e-4)
  assert clf2.truncated == ()
  long = zeroshot.classifier(ours, variables, tok, ["a very long label " * 5], templates[:1])
  assert long.truncated == ("a photo of a " + "a very long label " * 5 + ".",)
  with pytest.raises(UserError, match="no labels"):
    zeroshot.classifier(ours, variables, tok, [], templates)
  with pytest.raises(UserError, match="exactly one"):
    zeroshot.classifier(ours, variables, tok, names, ["a photo"])
