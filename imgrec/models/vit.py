"""Vision Transformer (Dosovitskiy et al. 2020): Ti/S/B/L with 32, 16, 8 or 4 px patches, named as
torchvision's `vit_b_16` (`conv_proj`, `class_token`, `pos_embedding`, `encoder_layer_{i}`
with `ln_1` / `self_attention` / `ln_2` / `mlp_0` / `mlp_3`, `encoder_ln`, `head`).

The learned position embedding takes its grid from the image size at `init`; applied to
another size, its grid is resized bilinearly (the class-token entry is kept), so a model
initialised at 224 px runs at 32 px and back. Attention is `jax.nn.dot_product_attention`.
LayerNorms use eps 1e-6 as torchvision (`ln_eps`: Hugging Face's ViT uses 1e-12); its exact (erf) GELU is
`gelu_approximate=False`. For imported checkpoints: `representation_size` adds big_vision's `pre_logits`
(Dense + tanh before the head, as in AugReg's ImageNet-21k checkpoints), `layer_scale` DeiT-III's per-channel
scales of each residual branch (`ls_1`, `ls_2`) and `pos_embed_class=False` its position embedding of the
patches only; `pool="map"` is SigLIP's attention-pooling head (`map_head`). For two-tower image and text towers
(imgrec/models/two_tower.py): `num_classes=0` ends at the pooled features (no `head`), `pre_norm` is CLIP's
LayerNorm ahead of the encoder (`ln_pre`), `quick_gelu` CLIP's x * sigmoid(1.702 x), and a block's `causal` mask
lets each token attend to earlier ones only (CLIP's text tower).

`features=True` (models.create_backbone) returns ViTDet's simple feature pyramid (Li et al. 2022) from the last
block's tokens (after `encoder_ln`, the class token dropped): {4, 8, 16, 32: NHWC map}, made by `pyramid`, the
only parameters features mode adds (no head is created). Image sides must then be multiples of the patch.
"""
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from imgrec.errors import UserError
from imgrec.models import layers
from imgrec.models.blocks import drop_path
from imgrec.models.layers import Conv

SIZES = {"ti": (192, 12, 3, 768), "s": (384, 12, 6, 1536), "b": (768, 12, 12, 3072),  # width, depth, heads, mlp
         "l": (1024, 24, 16, 4096)}
PATCHES = (16, 8, 4, 32)


def activation(x, approximate, quick):
  """The MLP's GELU: tanh form, exact (erf) form, or CLIP's quick form x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x) if quick else nn.gelu(x, approximate=approximate)


class SelfAttention(nn.Module):
  heads: int
  causal: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = nn.Dense(3 * d, name="in_proj", **kw)(x).reshape(b, t, 3, self.heads, d // self.heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.is_mutable_collection("intermediates"):
      # Asked for the weights [b, heads, t, t] (attention rollout): the fused kernel below does not return them.
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(d // self.heads)
      if self.causal:
        logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -jnp.inf)
      weights = jax.nn.softmax(logits).astype(v.dtype)
      self.sow("intermediates", "attention_weights", weights)
      y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    else:
      y = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
    return nn.Dense(d, name="out_proj", **kw)(y.reshape(b, t, d))


class EncoderBlock(nn.Module):
  heads: int
  mlp_dim: int
  dropout: float = 0.0
  drop_path: float = 0.0
  train: bool = False
  gelu_approximate: bool = True
  ln_eps: float = 1e-6
  layer_scale: bool = False
  quick_gelu: bool = False
  causal: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def scale(self, name, y):
    if not self.layer_scale:
      return y
    return y * self.param(name, nn.initializers.constant(1e-5), (y.shape[-1],), self.param_dtype).astype(y.dtype)

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dropout = functools.partial(nn.Dropout, self.dropout, deterministic=not self.train)
    y = SelfAttention(self.heads, self.causal, name="self_attention", **kw)(nn.LayerNorm(self.ln_eps, name="ln_1", **kw)(x))
    x = x + drop_path(self, self.scale("ls_1", dropout()(y)), self.drop_path, self.train)
    y = nn.Dense(self.mlp_dim, name="mlp_0", **kw)(nn.LayerNorm(self.ln_eps, name="ln_2", **kw)(x))
    y = activation(y, self.gelu_approximate, self.quick_gelu)
    y = nn.Dense(x.shape[-1], name="mlp_3", **kw)(dropout()(y))
    return x + drop_path(self, self.scale("ls_2", dropout()(y)), self.drop_path, self.train)


class MAPHead(nn.Module):
  """Multi-head attention pooling (big_vision's MAPHead, SigLIP's image tower): a learned probe attends over the
  tokens, then a residual MLP; timm's AttentionPoolLatent is the same computation."""
  heads: int
  mlp_dim: int
  gelu_approximate: bool = True
  ln_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, t, d = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), self.param_dtype)
    q = nn.Dense(d, name="q_proj", **kw)(jnp.broadcast_to(probe.astype(self.dtype), (n, 1, d)))
    kv = nn.Dense(2 * d, name="kv_proj", **kw)(x).reshape(n, t, 2, self.heads, d // self.heads)
    y = jax.nn.dot_product_attention(q.reshape(n, 1, self.heads, d // self.heads), kv[:, :, 0], kv[:, :, 1])
    y = nn.Dense(d, name="out_proj", **kw)(y.reshape(n, 1, d))
    z = nn.LayerNorm(self.ln_eps, name="ln", **kw)(y)
    z = nn.gelu(nn.Dense(self.mlp_dim, name="mlp_0", **kw)(z), approximate=self.gelu_approximate)
    return (y + nn.Dense(d, name="mlp_3", **kw)(z))[:, 0]


def upsample2(x, dense):
  """A 2x2 stride-2 transposed conv as `dense` (channels -> 4 * out) and a depth-to-space: the windows of a
  stride-2 2x2 deconv do not overlap, so each input cell writes its own 2x2 block."""
  n, h, w, _ = x.shape
  y = dense(x)
  c = y.shape[-1] // 4
  return y.reshape(n, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)


class SimplePyramid(nn.Module):
  """ViTDet's simple feature pyramid from one map at stride `patch`: below it, 2x2 stride-2 deconvs (each halving
  the channels; LayerNorm + GELU between two), the map itself at its own stride, 2x2 max-pools above it."""
  patch: int
  strides: Sequence[int] = (4, 8, 16, 32)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out = {}
    for s in self.strides:
      y = x
      if s < self.patch:
        for j in range(int(math.log2(self.patch // s))):
          if j:
            y = nn.gelu(nn.LayerNorm(1e-6, name=f"s{s}_ln{j}", **kw)(y), approximate=False)
          y = upsample2(y, nn.Dense(4 * max(1, y.shape[-1] // 2), name=f"s{s}_up{j + 1}", **kw))
      elif s > self.patch:
        y = layers.max_pool(y, s // self.patch, s // self.patch, "SAME")  # ceil sizes, as the conv families
      out[s] = y
    return out


def split_heads(width, heads):
  """`heads`, or where `width` does not split into that many (a model narrowed by model.kwargs.width, e.g.
  vit_s16's 6 heads at width 16), the most heads below it that do (4)."""
  return max(h for h in range(1, heads + 1) if width % h == 0)


def resize_grid(pos, n_extra, h, w):
  """Resizes the grid part of a (1, n_extra + H*W, D) position embedding to h x w (square grids)."""
  extra, grid = pos[:, :n_extra], pos[:, n_extra:]
  old = math.isqrt(grid.shape[1])
  if old * old != grid.shape[1]:
    raise UserError(f"cannot resize a non-square position embedding of {grid.shape[1]} patches to {h}x{w}; "
                    "initialise the model at the image size it is used at")
  grid = jax.image.resize(grid.reshape(1, old, old, -1), (1, h, w, grid.shape[-1]), "bilinear")
  return jnp.concatenate([extra, grid.reshape(1, h * w, -1).astype(pos.dtype)], axis=1)


class ViT(nn.Module):
  num_classes: int  # 0: no head, the pooled features are the output (a two-tower image tower)
  patch: int = 16
  width: int = 768
  depth: int = 12
  heads: int = 12     # fewer where `width` does not split into this many (split_heads)
  mlp_dim: int = 3072
  pool: str = "cls"   # "cls": class token | "gap": mean of the patch tokens | "map": attention pooling (both:
                      # no class token)
  dropout: float = 0.0
  drop_path_rate: float = 0.0  # stochastic depth of the last block, linear from 0
  gelu_approximate: bool = True  # tanh GELU (Flax's default); torchvision's nn.GELU is the exact erf form: False
  ln_eps: float = 1e-6
  layer_scale: bool = False  # DeiT-III: learned per-channel scales of each residual branch
  pos_embed_class: bool = True  # False (DeiT-III): the position embedding covers the patches only
  representation_size: Optional[int] = None  # big_vision's `pre_logits`: Dense(size) + tanh before the head
  pre_norm: bool = False  # CLIP: a LayerNorm (`ln_pre`) on the tokens ahead of the first block
  quick_gelu: bool = False  # CLIP's x * sigmoid(1.702 x) in the MLPs instead of GELU
  features: bool = False  # return the simple feature pyramid {4, 8, 16, 32: map} instead of the logits
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.pool not in ("cls", "gap", "map"):
      raise ValueError(f"pool must be 'cls', 'gap' or 'map', got {self.pool!r}")
    if min(x.shape[1], x.shape[2]) < self.patch:
      raise UserError(f"ViT with {self.patch} px patches needs images of at least {self.patch} px, "
                      f"got {x.shape[1]}x{x.shape[2]}")
    if self.features and (x.shape[1] % self.patch or x.shape[2] % self.patch or self.patch & (self.patch - 1)):
      raise UserError(f"ViT features need a power-of-two patch and image sides that are multiples of it: patch "
                      f"{self.patch}, images {x.shape[1]}x{x.shape[2]}; resize the images (data.pp_train/pp_eval) "
                      "or pick another patch")
    heads = split_heads(self.width, self.heads)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    x = Conv(self.width, (self.patch, self.patch), (self.patch, self.patch), padding="VALID",
                name="conv_proj", **kw)(x)
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    n_extra = 1 if self.pool == "cls" else 0
    pos_extra = n_extra if self.pos_embed_class else 0  # tokens ahead of the grid in the position embedding
    if n_extra:
      cls = self.param("class_token", nn.initializers.zeros, (1, 1, d), self.param_dtype)
      cls = jnp.broadcast_to(cls.astype(self.dtype), (n, 1, d))
    if pos_extra:
      x = jnp.concatenate([cls, x], axis=1)
    shape = (1, pos_extra + h * w, d)
    if self.has_variable("params", "pos_embedding"):  # keep the stored grid; resize below
      shape = self.get_variable("params", "pos_embedding").shape
    pos = self.param("pos_embedding", nn.initializers.normal(0.02), shape, self.param_dtype)
    if pos.shape[1] != pos_extra + h * w:
      pos = resize_grid(pos, pos_extra, h, w)
    x = x + pos.astype(self.dtype)
    if n_extra and not pos_extra:  # DeiT-III: the class token joins after the position embedding
      x = jnp.concatenate([cls, x], axis=1)
    if self.pre_norm:
      x = nn.LayerNorm(self.ln_eps, name="ln_pre", **kw)(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.depth):
      x = EncoderBlock(heads, self.mlp_dim, self.dropout, self.drop_path_rate * i / max(1, self.depth - 1),
                       train, gelu_approximate=self.gelu_approximate, ln_eps=self.ln_eps,
                       layer_scale=self.layer_scale, quick_gelu=self.quick_gelu, name=f"encoder_layer_{i}", **kw)(x)
    x = nn.LayerNorm(self.ln_eps, name="encoder_ln", **kw)(x)
    if self.features:
      return SimplePyramid(self.patch, name="pyramid", **kw)(x[:, n_extra:].reshape(n, h, w, d))
    if self.pool == "map":
      x = MAPHead(heads, self.mlp_dim, self.gelu_approximate, self.ln_eps, name="map_head", **kw)(x)
    else:
      x = x[:, 0] if n_extra else jnp.mean(x, axis=1)
    if self.representation_size:
      x = jnp.tanh(nn.Dense(self.representation_size, name="pre_logits", **kw)(x))
    if self.num_classes:
      x = nn.Dense(self.num_classes, name="head", **kw)(x)
    return x.astype(jnp.float32)


MODELS, INPUT_SHAPES = {}, {}
for _size, (_width, _depth, _heads, _mlp) in SIZES.items():
  for _patch in PATCHES:
    _name = f"vit_{_size}{_patch}"
    MODELS[_name] = functools.partial(ViT, patch=_patch, width=_width, depth=_depth, heads=_heads, mlp_dim=_mlp)
    if _patch == 4:
      INPUT_SHAPES[_name] = (32, 32, 3)  # 4 px patches are for CIFAR-sized images
