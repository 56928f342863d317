"""VGG (Simonyan & Zisserman 2014): configurations A/B/D/E = VGG-11/13/16/19, with or without BatchNorm.

Parameter names follow torchvision's layer indices (`features_0`, `features_1` = its BN,
`classifier_0/3/6`) so its weights map one to one (`classifier_0` flattens the map in H,W,C order,
torch in C,H,W: imgrec/checkpoint_import/torchvision.py reorders its rows). Max-pools on maps already 1 px wide are
skipped, and the adaptive average pool repeats a small map up to 7x7 as torchvision does.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from imgrec.models.blocks import adaptive_avg_pool, batch_norm, pool
from imgrec.models.layers import Conv

STAGES = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


class VGG(nn.Module):
  num_classes: int
  stage_sizes: Sequence[int] = STAGES[16]
  batch_norm: bool = False
  width: int = 64          # first stage; later stages 2x, 4x, 8x, 8x
  hidden: int = 4096
  pool_size: int = 7       # adaptive average pool before the classifier
  dropout: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = batch_norm(train, **kw)
    x = x.astype(self.dtype)
    index = 0  # torchvision's position in `features`
    for stage, n_convs in enumerate(self.stage_sizes):
      for _ in range(n_convs):
        x = Conv(self.width * min(2**stage, 8), (3, 3), padding="SAME", name=f"features_{index}", **kw)(x)
        if self.batch_norm:
          x = norm(name=f"features_{index + 1}")(x)
          index += 1
        x = nn.relu(x)
        index += 2
      x = pool(x, "max", 2, 2)
      index += 1
    x = adaptive_avg_pool(x, self.pool_size, self.pool_size).reshape((x.shape[0], -1))
    for i in (0, 3):
      x = nn.relu(nn.Dense(self.hidden, name=f"classifier_{i}", **kw)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, name="classifier_6", **kw)(x)
    return x.astype(jnp.float32)


MODELS = {}
for _depth, _stages in STAGES.items():
  MODELS[f"vgg{_depth}"] = functools.partial(VGG, stage_sizes=_stages)
  MODELS[f"vgg{_depth}_bn"] = functools.partial(VGG, stage_sizes=_stages, batch_norm=True)
