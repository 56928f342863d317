"""Two-tower image-text models (SigLIP, Zhai et al. 2023; CLIP, Radford et al. 2021): an image tower (the ViT of
imgrec/models/vit.py) and a text tower (imgrec/models/text.py) embedding into one space, scored by the cosine
similarity times a learned scale, plus a learned bias for SigLIP.

  siglip   MAP-pooled ViT (no class token), text pooled at its last position (no causal mask), Dense heads with
           bias, scores sigmoid(exp(t) * cos + b): each image-label pair on its own (t, b learned; init t=log 10,
           b=-10)
  clip     class-token ViT with a LayerNorm before the blocks, causal text pooled at its end-of-text token,
           projections without bias, scores softmax(exp(t) * cos) over the labels (t init log(1 / 0.07))

Parameter names follow big_vision's two-tower files: `img` (the image tower), `txt` (the text tower), `t` (log
scale), `b` (bias, SigLIP only); `img_proj` / `txt_proj` project a tower's features to the shared size
`num_classes` (for a two-tower model, `num_classes` is the size of that embedding space: its classes are written
as text at request time). `img_proj` exists when the image tower's width is not that size (or `image_proj` says
so); `txt_proj` always (SigLIP's text `head`, CLIP's `text_projection`).

`apply(variables, images)` gives the image embeddings [N, E] (not normalised), as a zoo model maps images to
an array; `init` also creates the text tower. `apply(variables, {"image", "tokens"})` (the image-text task's
training step) gives {"image_embeds", "text_embeds", "scale", "bias"}. `method="embed_text"` gives text
embeddings of token ids [M, L]; `method="scores"` (or `logits` below, with `scale_bias`) compares them.
"""
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from imgrec.models.text import TextTransformer
from imgrec.models.vit import ViT

CONVENTIONS = ("siglip", "clip")
# Published sizes (both: big_vision / OpenAI configurations, as on the Hugging Face hub).
SIGLIP_B16 = dict(
    image=dict(patch=16, width=768, depth=12, heads=12, mlp_dim=3072, pool="map", ln_eps=1e-6),
    text=dict(vocab_size=32000, max_len=64, width=768, depth=12, heads=12, mlp_dim=3072, pool="last", ln_eps=1e-6))
CLIP_B32 = dict(
    image=dict(patch=32, width=768, depth=12, heads=12, mlp_dim=3072, pool="cls", pre_norm=True, quick_gelu=True,
               ln_eps=1e-5),
    text=dict(vocab_size=49408, max_len=77, width=512, depth=12, heads=8, mlp_dim=2048, pool="eos", eos_id=49407,
              causal=True, quick_gelu=True, ln_eps=1e-5))
EMBED_DIMS = {"siglip_b16": 768, "clip_b32": 512}  # the published embedding sizes (`imgrec models` counts at them)


class TwoTower(nn.Module):
  num_classes: int                     # the shared embedding size
  convention: str = "siglip"           # "siglip" | "clip": the scores, the bias b, bias in the projections
  image: Any = None                    # ViT options of the image tower
  text: Any = None                     # TextTransformer options of the text tower
  image_proj: Optional[bool] = None    # project image features to num_classes; None: when the widths differ
  t_init: Optional[float] = None       # initial scale exp(t); None: 10 (siglip) or 1 / 0.07 (clip)
  b_init: float = -10.0                # initial SigLIP bias
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.convention not in CONVENTIONS:
      raise ValueError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    image, text = dict(self.image or {}), dict(self.text or {})
    self.img = ViT(0, **image, **kw)
    self.txt = TextTransformer(**text, **kw)
    bias = self.convention == "siglip"
    project = self.image_proj if self.image_proj is not None else image.get("width", 768) != self.num_classes
    self.img_proj = nn.Dense(self.num_classes, use_bias=bias, **kw) if project else None
    self.txt_proj = nn.Dense(self.num_classes, use_bias=bias, **kw)
    t0 = self.t_init or (10.0 if bias else 1 / 0.07)
    self.t = self.param("t", nn.initializers.constant(math.log(t0)), (1,), self.param_dtype)
    self.b = self.param("b", nn.initializers.constant(self.b_init), (1,), self.param_dtype) if bias else None

  @property
  def text_len(self):
    return dict(self.text or {})["max_len"]

  def embed_image(self, images, train: bool = False):
    z = self.img(images, train=train)
    return (self.img_proj(z) if self.img_proj is not None else z).astype(jnp.float32)

  def embed_text(self, tokens, train: bool = False):
    return self.txt_proj(self.txt(tokens, train=train)).astype(jnp.float32)

  def scale_bias(self):
    """(exp(t), b): b is 0 for CLIP."""
    b = self.b[0] if self.b is not None else jnp.zeros((), jnp.float32)
    return jnp.exp(self.t[0]).astype(jnp.float32), b.astype(jnp.float32)

  def scores(self, image_embeds, text_embeds):
    """Logits [N images, M texts] of (unnormalised) embeddings."""
    scale, bias = self.scale_bias()
    return logits(image_embeds, text_embeds, scale, bias)

  def __call__(self, images, train: bool = False):
    if isinstance(images, dict):  # training's inputs {"image", "tokens"}: both towers and the scores' terms
      scale, bias = self.scale_bias()
      return {"image_embeds": self.embed_image(images["image"], train),
              "text_embeds": self.embed_text(images["tokens"], train), "scale": scale, "bias": bias}
    z = self.embed_image(images, train)
    if self.is_initializing():  # one init creates every parameter, the text tower's too
      self.embed_text(jnp.zeros((1, self.text_len), jnp.int32))
      self.scale_bias()
    return z


def normalize(z, eps=1e-12):
  """Rows scaled to unit length (the cosine similarity's normalisation)."""
  return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), eps)


def logits(image_embeds, text_embeds, scale, bias=0.0):
  """scale * cos(image, text) + bias, [N, M]: sigmoid of it for SigLIP, softmax over M for CLIP."""
  return scale * normalize(image_embeds) @ normalize(text_embeds).T + bias


def probabilities(logits_, convention):
  """SigLIP scores each pair on its own (sigmoid); CLIP's labels compete (softmax over the last axis)."""
  return jax.nn.sigmoid(logits_) if convention == "siglip" else jax.nn.softmax(logits_, axis=-1)


MODELS = {"siglip_b16": functools.partial(TwoTower, convention="siglip", **SIGLIP_B16),
          "clip_b32": functools.partial(TwoTower, convention="clip", **CLIP_B32)}
