"""Two-tower checkpoints (both towers, scale and bias) onto imgrec's TwoTower (imgrec/models/two_tower.py):

  hf_siglip    Hugging Face SiglipModel: vision_model.{embeddings, encoder.layers.{i}, post_layernorm, head (MAP)},
               text_model.{embeddings, encoder.layers.{i}, final_layer_norm, head}, logit_scale, logit_bias
  hf_clip      Hugging Face CLIPModel: vision_model.{embeddings (class_embedding, no patch bias), pre_layrnorm,
               encoder, post_layernorm}, visual_projection, text_model.{...}, text_projection, logit_scale
  big_vision   a SigLIP / LiT .npz: img/ (the ViT layout of vit.py), txt/{Embed_0, pos_embedding,
               Encoder_0/encoderblock[_i], Encoder_0/encoder_norm, head}, t, b
open_clip's Hugging Face-format exports (open_clip_pytorch_model.bin aside) are CLIPModel / SiglipModel folders and
import as those. The sizes are read from the tensors, the heads and activations from config.json (Hugging Face) or
the q kernels (big_vision). The image tower's rules are vit.py's; the text tower's blocks reuse them too (its
tensors renamed into the ViT layout's names). The tokenizer files in the checkpoint's folder (tokenizer.json,
spiece.model, or vocab.json + merges.txt) are copied into the import folder with their conventions (text.json,
imgrec/tokenizer.py): from tokenizer_config.json for Hugging Face folders; a big_vision .npz takes the
spiece.model beside it, with SigLIP's conventions (lower case, canonical text, eos and pad "</s>").
"""
import json
import os
import re
import shutil

import numpy as np
import sentencepiece
import tokenizers

from imgrec import tokenizer
from imgrec.checkpoint_import import formats, vit
from imgrec.checkpoint_import.mapping import Rule, linear, same, split
from imgrec.errors import UserError

ACTIVATIONS = {"gelu_pytorch_tanh": dict(gelu_approximate=True), "gelu_new": dict(gelu_approximate=True),
               "gelu": dict(gelu_approximate=False), "quick_gelu": dict(quick_gelu=True)}


def rename(key):
  return key.removeprefix("params/")


def layout(keys):
  if "t" in keys and "img/embedding/kernel" in keys and "txt/Embed_0/embedding" in keys:
    return "big_vision"
  if "vision_model.embeddings.patch_embedding.weight" in keys and "text_model.embeddings.token_embedding.weight" in keys:
    return "hf_siglip" if "logit_bias" in keys else "hf_clip"
  return None


def _count(shapes, pattern):
  return sum(1 for k in shapes if re.fullmatch(pattern, k))


def _activation(cfg, tower, default):
  act = (cfg.get(tower) or {}).get("hidden_act", default)
  if act not in ACTIVATIONS:
    raise UserError(f"{tower}.hidden_act {act!r}: imgrec's two towers import {', '.join(ACTIVATIONS)}")
  return dict(ACTIVATIONS[act])


def _hf_arch(s, cfg, clip):
  v, t = cfg.get("vision_config") or {}, cfg.get("text_config") or {}
  width, _, p, _ = s["vision_model.embeddings.patch_embedding.weight"]
  tokens = s["vision_model.embeddings.position_embedding.weight"][0] - int(clip)
  image = dict(patch=int(p), width=int(width), depth=_count(s, r"vision_model\.encoder\.layers\.\d+\.layer_norm1\.weight"),
               heads=int(v.get("num_attention_heads", vit.HEADS.get(width, 12))),
               mlp_dim=int(s["vision_model.encoder.layers.0.mlp.fc1.weight"][0]), pool="cls" if clip else "map",
               ln_eps=float(v.get("layer_norm_eps", 1e-5 if clip else 1e-6)),
               **_activation(cfg, "vision_config", "quick_gelu" if clip else "gelu_pytorch_tanh"))
  vocab, twidth = s["text_model.embeddings.token_embedding.weight"]
  text = dict(vocab_size=int(vocab), max_len=int(s["text_model.embeddings.position_embedding.weight"][0]),
              width=int(twidth), depth=_count(s, r"text_model\.encoder\.layers\.\d+\.layer_norm1\.weight"),
              heads=int(t.get("num_attention_heads", 8 if clip else 12)),
              mlp_dim=int(s["text_model.encoder.layers.0.mlp.fc1.weight"][0]),
              ln_eps=float(t.get("layer_norm_eps", 1e-5 if clip else 1e-6)),
              **_activation(cfg, "text_config", "quick_gelu" if clip else "gelu_pytorch_tanh"))
  if clip:
    image["pre_norm"] = True
    eos = t.get("eos_token_id", 2)
    # transformers' legacy configs (eos_token_id 2) pool at the largest id: CLIP's end-of-text is the last id
    text.update(pool="eos", causal=True, eos_id=int(vocab - 1 if eos == 2 else eos))
    embed = s["text_projection.weight"][0]
    return dict(image=image, text=text, image_proj=True), int(embed), int(round(tokens ** 0.5)) * int(p)
  text["pool"] = "last"
  return dict(image=image, text=text, image_proj=False), int(s["text_model.head.weight"][0]), \
      int(round(tokens ** 0.5)) * int(p)


def _bv_arch(source):
  s = source.shapes
  img_shapes = {k[4:]: v for k, v in s.items() if k.startswith("img/")}
  name, kwargs, classes, size = vit.arch(source._replace(shapes=img_shapes), "big_vision")
  image = dict(vit.zoo.MODELS[name].keywords)
  image.update(kwargs)
  image.pop("representation_size", None)
  txt = {k[4:]: v for k, v in s.items() if k.startswith("txt/")}
  scanned = "Encoder_0/encoderblock/LayerNorm_0/scale" in txt
  blk = "Encoder_0/encoderblock/" if scanned else "Encoder_0/encoderblock_0/"
  vocab, width = txt["Embed_0/embedding"]
  q = txt[blk + "MultiHeadDotProductAttention_0/query/kernel"]
  text = dict(vocab_size=int(vocab), max_len=int(txt["pos_embedding"][1]), width=int(width),
              depth=int(txt["Encoder_0/encoderblock/LayerNorm_0/scale"][0]) if scanned else
              _count(txt, r"Encoder_0/encoderblock_\d+/LayerNorm_0/scale"),
              heads=int(q[-2]), mlp_dim=int(txt[blk + "MlpBlock_0/Dense_0/kernel"][-1]), pool="last", ln_eps=1e-6)
  if "head/kernel" not in txt:
    raise UserError(f"{source.path}: its text tower has no head (txt/head/kernel); imgrec imports two-tower files "
                    "whose text tower projects to the shared embedding")
  embed = int(txt["head/kernel"][1])
  return dict(image=image, text=text, image_proj=classes is not None), embed, size


def arch(source, layout_, model=None):
  """(zoo name, kwargs, embedding size, image size) of a two-tower checkpoint."""
  clip = layout_ == "hf_clip"
  if layout_ == "big_vision":
    kwargs, embed, size = _bv_arch(source)
  else:
    kwargs, embed, size = _hf_arch(source.shapes, source.config or {}, clip)
  name = model or ("clip_b32" if clip else "siglip_b16")
  if name not in ("siglip_b16", "clip_b32") or (name == "clip_b32") != clip:
    raise UserError(f"--model {model!r}: this checkpoint is a {'CLIP' if clip else 'SigLIP'} two-tower model; give "
                    f"{'clip_b32' if clip else 'siglip_b16'} or leave --model out")
  return name, kwargs, embed, size


def _sub(rule_, prefix):
  return Rule(tuple(prefix + k for k in rule_.keys), rule_.fn)


def _hf_block(prefix, part, leaf, ndim):
  """An encoder block of a Hugging Face Siglip/CLIP tower (q, k, v, out_proj, layer_norm1/2, mlp.fc1/2)."""
  if part == "self_attention/in_proj":
    keys = tuple(f"{prefix}.self_attn.{x}_proj.{'weight' if leaf == 'kernel' else 'bias'}" for x in "qkv")
    if leaf == "kernel":
      return Rule(keys, lambda *w: np.concatenate([np.transpose(a) for a in w], axis=1))
    return Rule(keys, lambda *b: np.concatenate(b))
  name = {"self_attention/out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
          "mlp_0": "mlp.fc1", "mlp_3": "mlp.fc2"}[part]
  return _torch(f"{prefix}.{name}", leaf, ndim)


def _torch(prefix, leaf, ndim):
  if leaf == "kernel":
    return linear(prefix + ".weight") if ndim == 2 else Rule((prefix + ".weight",), lambda w: np.transpose(w, (2, 3, 1, 0)))
  return same(f"{prefix}.{ {'scale': 'weight', 'bias': 'bias'}[leaf]}")


def _hf_map_head(part, leaf, ndim):
  """SigLIP's pooling head: torch's MultiheadAttention keeps q | k | v in one in_proj."""
  sub = part.split("/", 1)[1] if "/" in part else ""
  h = "vision_model.head"
  if sub == "":
    return same(f"{h}.probe")
  if sub in ("q_proj", "kv_proj"):
    rows = (lambda a: a[:a.shape[0] // 3]) if sub == "q_proj" else (lambda a: a[a.shape[0] // 3:])
    if leaf == "kernel":
      return Rule((f"{h}.attention.in_proj_weight",), lambda w: np.ascontiguousarray(rows(w).T))
    return Rule((f"{h}.attention.in_proj_bias",), rows)
  name = {"out_proj": "attention.out_proj", "ln": "layernorm", "mlp_0": "mlp.fc1", "mlp_3": "mlp.fc2"}[sub]
  return _torch(f"{h}.{name}", leaf, ndim)


def _hf_rule(layout_, name, ndim):
  path, leaf = split(name)
  tower, _, part = path.partition("/")
  if path == "":  # t, b
    return Rule(({"t": "logit_scale", "b": "logit_bias"}[leaf],), lambda a: np.reshape(a, (1,)))
  if tower in ("img_proj", "txt_proj"):  # SigLIP has no image projection: its MAP head's output is the embedding
    key = {"img_proj": "visual_projection", "txt_proj": "text_projection"}[tower]
    return _torch("text_model.head" if layout_ == "hf_siglip" else key, leaf, ndim)
  m = re.fullmatch(r"encoder_layer_(\d+)/(.*)", part)
  if tower == "img":
    if m:
      return _hf_block(f"vision_model.encoder.layers.{m[1]}", m[2], leaf, ndim)
    if part.startswith("map_head"):
      return _hf_map_head(part, leaf, ndim)
    if part == "":
      if leaf == "class_token":
        return Rule(("vision_model.embeddings.class_embedding",), lambda a: a.reshape(1, 1, -1))
      return Rule(("vision_model.embeddings.position_embedding.weight",), lambda a: a[None])
    if part == "conv_proj" and leaf == "bias" and layout_ == "hf_clip":  # CLIP's patch embedding has no bias
      return Rule(("vision_model.embeddings.patch_embedding.weight",), lambda w: np.zeros(w.shape[0], w.dtype))
    names = {"conv_proj": "vision_model.embeddings.patch_embedding", "ln_pre": "vision_model.pre_layrnorm",
             "encoder_ln": "vision_model.post_layernorm"}
    return _torch(names[part], leaf, 4 if part == "conv_proj" else ndim)
  if m:
    return _hf_block(f"text_model.encoder.layers.{m[1]}", m[2], leaf, ndim)
  if part == "" or part == "token_embedding":
    key = ("text_model.embeddings.position_embedding.weight" if leaf == "pos_embedding"
           else "text_model.embeddings.token_embedding.weight")
    return Rule((key,), (lambda a: a[None]) if leaf == "pos_embedding" else None)
  return _torch("text_model.final_layer_norm", leaf, ndim)


def _bv_text_shapes(shapes):
  """The text tower's keys in the ViT layout's names (Encoder_0 -> Transformer), so vit.py's block rules apply."""
  return {k[4:].replace("Encoder_0/", "Transformer/"): v for k, v in shapes.items() if k.startswith("txt/")}


def _bv_rule(name, target, shapes):
  path, leaf = split(name)
  tower, _, part = path.partition("/")
  if path == "":  # t, b
    return same(leaf)
  if tower == "img_proj":
    return same(f"img/head/{leaf}")
  if tower == "txt_proj":
    return same(f"txt/head/{leaf}")
  sub_name = f"params/{part}/{leaf}" if part else f"params/{leaf}"
  if tower == "img":
    img_shapes = {k[4:]: v for k, v in shapes.items() if k.startswith("img/")}
    return _sub(vit.rule("big_vision", sub_name, {sub_name: target[name]}, img_shapes), "img/")
  if part == "token_embedding":
    return same("txt/Embed_0/embedding")
  if part == "" and leaf == "pos_embedding":
    return same("txt/pos_embedding")
  r = vit.rule("big_vision", sub_name, {sub_name: target[name]}, _bv_text_shapes(shapes))
  return Rule(tuple("txt/" + k.replace("Transformer/", "Encoder_0/") for k in r.keys), r.fn)


def rule(layout_, name, target, shapes):
  if layout_ == "big_vision":
    return _bv_rule(name, target, shapes)
  return _hf_rule(layout_, name, len(target[name]))


TEMPLATE = "This is a photo of {}."  # Hugging Face's zero-shot pipeline's default hypothesis template


def _special_id(name, cfg, lookup):
  token = cfg.get(name)
  token = token.get("content") if isinstance(token, dict) else token
  return None if token is None else lookup(token)


def text_conventions(folder, layout_, kwargs):
  """(tokenizer files to copy, text.json conventions) of a checkpoint's folder, or (None, None) when it holds no
  tokenizer file (the import then has no text conventions, and zero-shot asks for them by name)."""
  cfg = formats._json_beside(folder, "tokenizer_config.json") or {}
  present = lambda n: os.path.isfile(os.path.join(folder, n))
  if present("tokenizer.json"):
    tok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    kind, names, lookup = "tokenizer.json", ["tokenizer.json"], tok.token_to_id
    self_adds = json.load(open(os.path.join(folder, "tokenizer.json"), encoding="utf-8")).get("post_processor")
  elif present("spiece.model"):
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(folder, "spiece.model"))
    kind, names, lookup, self_adds = "spiece.model", ["spiece.model"], sp.piece_to_id, None
    cfg = {"eos_token": "</s>", "pad_token": "</s>", **cfg}  # T5 / SigLIP: eos ends a text, pads follow
  elif present("vocab.json") and present("merges.txt"):
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
      vocab = json.load(f)
    kind, names, lookup, self_adds = "vocab.json", ["vocab.json", "merges.txt"], vocab.get, None
    cfg = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", **cfg}
  else:
    return None, None
  eos = _special_id("eos_token", cfg, lookup)
  conv = {"file": kind, "max_len": int(kwargs["text"]["max_len"]), "lower": bool(cfg.get("do_lower_case", True)),
          "canonicalize": str(cfg.get("tokenizer_class", "")).startswith("Siglip") or layout_ == "big_vision",
          "bos_id": None if kind == "spiece.model" else _special_id("bos_token", cfg, lookup), "eos_id": eos,
          "pad_id": _special_id("pad_token", cfg, lookup) if cfg.get("pad_token") else eos,
          "add_special": not self_adds, "template": TEMPLATE}
  if conv["eos_id"] is None or conv["pad_id"] is None:
    raise UserError(f"{folder}: its tokenizer names no end-of-text / pad token imgrec can find "
                    f"(tokenizer_config.json eos_token {cfg.get('eos_token')!r}, pad_token {cfg.get('pad_token')!r})")
  return names, conv


def copy_tokenizer(folder, layout_, kwargs, out):
  """Copies the tokenizer files of `folder` into `out` with their text.json; returns the conventions (or None)."""
  names, conv = text_conventions(folder, layout_, kwargs)
  if names is None:
    return None
  for n in names:
    shutil.copyfile(os.path.join(folder, n), os.path.join(out, n))
  tokenizer.write(out, conv)
  return conv


def run_config(cfg, imp, folder):
  """Makes `cfg` (config.defaults() with the import's model and input) the config of an image_text run of the
  import folder: its tokenizer (text.json there), embedding size, text length and loss by its convention."""
  cfg.task = "image_text"
  v = cfg.image_text
  v.tokenizer = os.path.abspath(folder)
  v.embed_dim = int(imp["num_classes"])
  v.text_len = int(imp["model"]["kwargs"]["text"]["max_len"])
  v.loss = "softmax" if imp["model"]["name"].startswith("clip") else "sigmoid"
