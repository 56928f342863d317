"""ViT / DeiT / DeiT-III checkpoints onto imgrec's ViT (imgrec/models/vit.py), from four layouts:

  timm         patch_embed.proj, cls_token, pos_embed, blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2,
               ls1.gamma,ls2.gamma}, norm, head (exact GELU)
  hf           Hugging Face ViT{Model,ForImageClassification}: [vit.]embeddings..., q/k/v/o projections, classifier;
               the transformers-4 names (encoder.layer.{i}.attention.attention.query, ...) are read too
  big_vision   the ViT repository / big_vision .npz: embedding, cls, [Transformer/posembed_input/]pos_embedding,
               Transformer/encoderblock_{i}/..., encoder_norm, pre_logits, head (tanh GELU, Flax's default)
  torchvision  vit_b_16 & co: conv_proj, class_token, encoder.layers.encoder_layer_{i}..., heads.head
The shape of the network (width, depth, MLP, patch, class token, GAP or MAP (attention-pooling, SigLIP's image
tower) head, pre-logits, layer scale, image size)
is read from the tensors; the number of heads from the config (Hugging Face), the big_vision q kernels, or the
published size of that width.
"""
import math
import re

import numpy as np

from imgrec.checkpoint_import.mapping import Rule, linear, same, split, torch_leaf
from imgrec.errors import UserError
from imgrec.models import vit as zoo

HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # the published ViT sizes' heads per width
LETTER = {w: k for k, (w, *_) in zoo.SIZES.items()}
HF_OLD = ((r"^encoder\.layer\.(\d+)\.", r"layers.\1."), (r"attention\.attention\.query\.", "attention.q_proj."),
          (r"attention\.attention\.key\.", "attention.k_proj."), (r"attention\.attention\.value\.", "attention.v_proj."),
          (r"attention\.output\.dense\.", "attention.o_proj."), (r"intermediate\.dense\.", "mlp.fc1."),
          (r"\.output\.dense\.", ".mlp.fc2."))


def layout(keys):
  if "patch_embed.proj.weight" in keys:
    return "timm"
  if "embeddings.patch_embeddings.projection.weight" in keys:
    return "hf"
  if "embedding/kernel" in keys:
    return "big_vision"
  if "conv_proj.weight" in keys and "encoder.pos_embedding" in keys:
    return "torchvision"
  return None


def rename(key):
  """Hugging Face keys without the `vit.` root and in transformers-5 names (the other layouts have neither)."""
  key = key.removeprefix("vit.")
  for pattern, new in HF_OLD:
    key = re.sub(pattern, new, key)
  return key


IGNORED = {"hf": r"^pooler\."}  # ViTModel's pooler (Dense + tanh on the class token): no classifier reads it
SCANNED = "Transformer/encoderblock/"  # big_vision with scan=True: one stacked [depth, ...] array per parameter


def _bv_block(shapes, i):
  """(prefix of block i, index into stacked arrays or None)."""
  return (SCANNED, i) if SCANNED + "LayerNorm_0/scale" in shapes else (f"Transformer/encoderblock_{i}/", None)


def _bv_names(shapes):
  """The ViT repository's block sub-module names, or big_vision's (also the repository's own scan=False)."""
  blk, _ = _bv_block(shapes, 0)
  if blk + "MultiHeadDotProductAttention_1/query/kernel" in shapes:
    return {"mha": "MultiHeadDotProductAttention_1", "ln_1": "LayerNorm_0", "ln_2": "LayerNorm_2", "mlp": "MlpBlock_3"}
  return {"mha": "MultiHeadDotProductAttention_0", "ln_1": "LayerNorm_0", "ln_2": "LayerNorm_1", "mlp": "MlpBlock_0"}


KEYS = {  # per layout: (patch kernel, block i's first LayerNorm, block 0's first MLP kernel, class token, pos, head)
    "timm": ("patch_embed.proj.weight", "blocks.{}.norm1.weight", "blocks.0.mlp.fc1.weight", "cls_token", "pos_embed",
             "head.weight"),
    "hf": ("embeddings.patch_embeddings.projection.weight", "layers.{}.layernorm_before.weight", "layers.0.mlp.fc1.weight",
           "embeddings.cls_token", "embeddings.position_embeddings", "classifier.weight"),
    "torchvision": ("conv_proj.weight", "encoder.layers.encoder_layer_{}.ln_1.weight",
                    "encoder.layers.encoder_layer_0.mlp.0.weight", "class_token", "encoder.pos_embedding",
                    "heads.head.weight"),
}


def arch(source, layout_, model=None):
  """(zoo name, kwargs, num_classes or None, image size) of a ViT checkpoint."""
  s, cfg = source.shapes, source.config or {}
  if layout_ == "big_vision":
    names, (blk, idx) = _bv_names(s), _bv_block(s, 0)
    p, _, _, width = s["embedding/kernel"]
    depth = (s[SCANNED + "LayerNorm_0/scale"][0] if idx is not None else
             sum(1 for k in s if re.fullmatch(r"Transformer/encoderblock_\d+/LayerNorm_0/scale", k)))
    mlp = s[f"{blk}{names['mlp']}/Dense_0/kernel"][-1]
    heads = s[f"{blk}{names['mha']}/query/kernel"][-2]
    cls, pos = "cls" in s, s.get("Transformer/posembed_input/pos_embedding", s.get("pos_embedding"))
    classes = s["head/kernel"][1] if "head/kernel" in s else None
    attention_pool = "MAPHead_0/probe" in s
  else:
    patch_key, block, mlp_key, cls_key, pos_key, head_key = KEYS[layout_]
    width, _, p, _ = s[patch_key]
    depth = sum(1 for i in range(10_000) if block.format(i) in s) if block.format(0) in s else 0
    mlp = s[mlp_key][0] if mlp_key in s else 4 * width
    heads = cfg.get("num_attention_heads") or (cfg.get("model_args") or {}).get("num_heads") or HEADS.get(width)
    cls, pos = cls_key in s, s.get(pos_key)
    classes = s[head_key][0] if head_key in s else None
    attention_pool = "attn_pool.latent" in s
  if pos is None or len(pos) != 3:
    raise UserError(f"{source.path}: no (1, tokens, width) position embedding found; not a ViT checkpoint imgrec knows")
  pos_class = cls and math.isqrt(pos[1]) ** 2 != pos[1]  # False: DeiT-III's embedding of the patches only
  grid = math.isqrt(pos[1] - pos_class)
  if grid * grid != pos[1] - pos_class:
    raise UserError(f"{source.path}: the position embedding has {pos[1]} tokens, not {int(cls)} + a square grid")
  found = f"vit_{LETTER.get(width, 'b')}{p if p in zoo.PATCHES else 16}"
  if model:
    name = model
    if model not in zoo.MODELS:
      raise UserError(f"--model {model!r} is not a ViT; this checkpoint is a ViT ({width} wide, {depth} blocks, "
                      f"patch {p}): give e.g. {found}")
    size = zoo.MODELS[model].keywords
    if width in LETTER and (size.get("width") != width or size.get("patch") != p):  # a run named for shapes it lacks
      raise UserError(f"--model {model} is a ViT {size.get('width')} wide with patch {size.get('patch')}; this "
                      f"checkpoint is {width} wide with patch {p}: give --model {found}, or leave --model out")
  else:
    name = found
  if heads is None:
    raise UserError(f"{source.path}: width {width} is not a published ViT size and the checkpoint does not say its "
                    "number of attention heads (config.json num_attention_heads / model_args.num_heads)")
  fields = zoo.MODELS[name].keywords
  want = {"patch": p, "width": width, "depth": depth, "heads": heads, "mlp_dim": mlp}
  kwargs = {k: int(v) for k, v in want.items() if fields.get(k) != v}
  if cls and not pos_class:
    kwargs["pos_embed_class"] = False
  if attention_pool:
    kwargs["pool"] = "map"
  elif not cls:
    kwargs["pool"] = "gap"
  if layout_ != "big_vision":
    kwargs["gelu_approximate"] = False  # torch's nn.GELU is the exact form; big_vision's Flax nn.gelu is tanh
  if layout_ == "hf" and cfg.get("layer_norm_eps", 1e-12) != 1e-6:
    kwargs["ln_eps"] = float(cfg.get("layer_norm_eps", 1e-12))
  if layout_ == "hf" and cfg.get("hidden_act", "gelu") != "gelu":
    raise UserError(f"{source.path}: hidden_act {cfg['hidden_act']!r}; imgrec's ViT imports 'gelu' models")
  if "pre_logits/kernel" in s:
    kwargs["representation_size"] = int(s["pre_logits/kernel"][1])
  if "blocks.0.ls1.gamma" in s:
    kwargs["layer_scale"] = True
  return name, kwargs, None if classes is None else int(classes), int(grid * p)


def _hf_qkv(prefix, leaf):
  keys = tuple(f"{prefix}.attention.{x}_proj.{'weight' if leaf == 'kernel' else 'bias'}" for x in "qkv")
  if leaf == "kernel":
    return Rule(keys, lambda *w: np.concatenate([np.transpose(a) for a in w], axis=1))
  return Rule(keys, lambda *b: np.concatenate(b))


def _bv_qkv(prefix, leaf):
  keys = tuple(f"{prefix}/{x}/{leaf}" for x in ("query", "key", "value"))
  if leaf == "kernel":  # (D, heads, head_dim) each -> (D, 3 * D), q | k | v as imgrec's reshape expects
    return Rule(keys, lambda *w: np.concatenate([a.reshape(a.shape[0], -1) for a in w], axis=1))
  return Rule(keys, lambda *b: np.concatenate([a.reshape(-1) for a in b]))


def rule(layout_, name, target, shapes):
  path, leaf = split(name)
  m = re.fullmatch(r"encoder_layer_(\d+)/?(.*)", path)
  i, part = (int(m[1]), m[2]) if m else (None, path)
  if layout_ == "big_vision":
    return _bv_map_rule(part, leaf) if part.startswith("map_head") else _bv_rule(i, part, leaf, shapes)
  t = lambda prefix: torch_leaf(prefix, leaf, len(target[name]))
  if layout_ == "timm" and part.startswith("map_head"):
    if part == "map_head":
      return same("attn_pool.latent")
    sub = {"q_proj": "q", "kv_proj": "kv", "out_proj": "proj", "ln": "norm", "mlp_0": "mlp.fc1",
           "mlp_3": "mlp.fc2"}[part.split("/")[1]]
    return t(f"attn_pool.{sub}")
  if layout_ == "timm":
    if i is not None and part == "":
      return same(f"blocks.{i}.{leaf.replace('_', '')}.gamma")  # ls_1 -> ls1.gamma
    if i is not None:
      return t(f"blocks.{i}.{TIMM_BLOCK[part]}")
    if part == "":
      return same({"class_token": "cls_token", "pos_embedding": "pos_embed"}[leaf])
    return t({"conv_proj": "patch_embed.proj", "encoder_ln": "norm"}.get(part, part))
  if layout_ == "hf":
    if i is not None and part == "self_attention/in_proj":
      return _hf_qkv(f"layers.{i}", leaf)
    if i is not None:
      return t(f"layers.{i}.{HF_BLOCK[part]}")
    if part == "":
      return same({"class_token": "embeddings.cls_token", "pos_embedding": "embeddings.position_embeddings"}[leaf])
    return t({"conv_proj": "embeddings.patch_embeddings.projection", "encoder_ln": "layernorm",
              "head": "classifier"}.get(part, part))
  if i is not None:  # torchvision
    prefix = f"encoder.layers.encoder_layer_{i}"
    if part == "self_attention/in_proj":  # nn.MultiheadAttention keeps q, k, v stacked in one matrix
      return (linear if leaf == "kernel" else same)(f"{prefix}.self_attention.in_proj_{'weight' if leaf == 'kernel' else 'bias'}")
    return t(f"{prefix}.{part.replace('/', '.').replace('mlp_', 'mlp.')}")
  if part == "":
    return same({"class_token": "class_token", "pos_embedding": "encoder.pos_embedding"}[leaf])
  return t({"encoder_ln": "encoder.ln", "head": "heads.head"}.get(part, part))


TIMM_BLOCK = {"ln_1": "norm1", "ln_2": "norm2", "self_attention/in_proj": "attn.qkv", "self_attention/out_proj": "attn.proj",
              "mlp_0": "mlp.fc1", "mlp_3": "mlp.fc2"}
HF_BLOCK = {"ln_1": "layernorm_before", "ln_2": "layernorm_after", "self_attention/out_proj": "attention.o_proj",
            "mlp_0": "mlp.fc1", "mlp_3": "mlp.fc2"}


def _bv_map_rule(part, leaf):
  """big_vision's MAPHead_0 onto imgrec's map_head: q from `query`, kv from `key` | `value`."""
  mha = "MAPHead_0/MultiHeadDotProductAttention_0"
  if part == "map_head":
    return same("MAPHead_0/probe")
  sub = part.split("/")[1]
  if sub == "q_proj":
    return Rule((f"{mha}/query/{leaf}",), lambda w: w.reshape(w.shape[0], -1) if leaf == "kernel" else w.reshape(-1))
  if sub == "kv_proj":
    keys = (f"{mha}/key/{leaf}", f"{mha}/value/{leaf}")
    if leaf == "kernel":
      return Rule(keys, lambda *w: np.concatenate([a.reshape(a.shape[0], -1) for a in w], axis=1))
    return Rule(keys, lambda *b: np.concatenate([a.reshape(-1) for a in b]))
  if sub == "out_proj":
    return Rule((f"{mha}/out/{leaf}",), (lambda w: w.reshape(-1, w.shape[-1])) if leaf == "kernel" else None)
  return same({"ln": "MAPHead_0/LayerNorm_0", "mlp_0": "MAPHead_0/MlpBlock_0/Dense_0",
               "mlp_3": "MAPHead_0/MlpBlock_0/Dense_1"}[sub] + f"/{leaf}")


def _bv_rule(i, part, leaf, shapes):
  names = _bv_names(shapes)
  if i is None:
    if part == "":
      if leaf == "class_token":
        return same("cls")
      return same("pos_embedding" if "pos_embedding" in shapes else "Transformer/posembed_input/pos_embedding")
    top = {"conv_proj": "embedding", "encoder_ln": "Transformer/encoder_norm", "head": "head",
           "pre_logits": "pre_logits"}
    return same(f"{top.get(part, part)}/{leaf}")
  blk, idx = _bv_block(shapes, i)
  if part == "self_attention/in_proj":
    r = _bv_qkv(f"{blk}{names['mha']}", leaf)
  elif part == "self_attention/out_proj":  # kernel (heads, head_dim, D) -> (D, D)
    r = Rule((f"{blk}{names['mha']}/out/{leaf}",), (lambda w: w.reshape(-1, w.shape[-1])) if leaf == "kernel" else None)
  else:
    sub = {"ln_1": names["ln_1"], "ln_2": names["ln_2"], "mlp_0": f"{names['mlp']}/Dense_0",
           "mlp_3": f"{names['mlp']}/Dense_1"}
    r = same(f"{blk}{sub.get(part, part)}/{leaf}")
  if idx is None:
    return r
  fn = r.fn or (lambda a: a)
  return Rule(r.keys, lambda *a: fn(*(x[idx] for x in a)))  # block i of the stacked arrays
