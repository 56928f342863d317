"""A text transformer: the text tower of two-tower (SigLIP, CLIP) models, token ids [N, L] -> features [N, width].

Token embedding (`token_embedding`) plus a learned position embedding (`pos_embedding`, one per position up to
`max_len`), pre-LN blocks shared with the ViT (`encoder_layer_{i}`), a final LayerNorm (`encoder_ln`), then one
token's features: the last position (`pool="last"`, SigLIP: the text is always padded to `max_len`, so the last
token is a pad whose features have attended over the whole text) or the first `eos_id` (`pool="eos"`, CLIP: with
the causal mask the end-of-text token is the first to have seen every word). The projection to the shared
embedding space belongs to the two-tower model, not to this tower.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from imgrec.errors import UserError
from imgrec.models.vit import EncoderBlock


class TextTransformer(nn.Module):
  vocab_size: int
  max_len: int
  width: int = 512
  depth: int = 12
  heads: int = 8
  mlp_dim: int = 2048
  pool: str = "last"           # "last": the last position (SigLIP) | "eos": the first eos_id (CLIP)
  eos_id: int = -1             # the end-of-text id pool="eos" looks for
  causal: bool = False         # CLIP: each token attends to itself and earlier tokens only
  gelu_approximate: bool = True
  quick_gelu: bool = False     # CLIP (OpenAI weights): x * sigmoid(1.702 x)
  ln_eps: float = 1e-6
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    if self.pool not in ("last", "eos"):
      raise ValueError(f"pool must be 'last' or 'eos', got {self.pool!r}")
    n, length = tokens.shape
    if length > self.max_len:
      raise UserError(f"text of {length} tokens is longer than the text tower's {self.max_len} positions; "
                      "tokenize with its max_len")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 name="token_embedding", **kw)(tokens)
    pos = self.param("pos_embedding", nn.initializers.normal(0.01), (1, self.max_len, self.width), self.param_dtype)
    x = x + pos[:, :length].astype(self.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.depth):
      x = EncoderBlock(self.heads, self.mlp_dim, self.dropout, train=train, gelu_approximate=self.gelu_approximate,
                       ln_eps=self.ln_eps, quick_gelu=self.quick_gelu, causal=self.causal,
                       name=f"encoder_layer_{i}", **kw)(x)
    x = nn.LayerNorm(self.ln_eps, name="encoder_ln", **kw)(x)
    if self.pool == "last":
      return x[:, -1].astype(jnp.float32)
    at = jnp.argmax(tokens == self.eos_id, axis=-1)  # the first end-of-text token
    return jnp.take_along_axis(x, at[:, None, None], axis=1)[:, 0].astype(jnp.float32)
