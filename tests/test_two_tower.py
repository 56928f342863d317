"""Two-tower models: the published sizes count as Hugging Face's models, the text towers pool as their convention
says (CLIP: causal, at the first EOS; SigLIP: the last position, seeing every token)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgrec import models
from imgrec.models import profile
from tests.test_zoo import TINY


@pytest.mark.parametrize("name", ["siglip_b16", "clip_b32"])
def test_published_sizes_count_as_hugging_face(name):
  ref = pytest.importorskip("tests.torch_reference")
  torch, tf = ref.torch, ref.transformers
  with torch.device("meta"):  # shapes only: nothing allocated
    hf = tf.SiglipModel(tf.SiglipConfig()) if name == "siglip_b16" else tf.CLIPModel(tf.CLIPConfig())
  theirs = sum(p.numel() for p in hf.parameters())
  ours = profile.describe(name, flops=False)["params"]
  # CLIP's patch embedding has no bias; imgrec's ViT has one (768 values, imported as zeros)
  assert ours - theirs == (768 if name == "clip_b32" else 0), (ours, theirs)


def test_text_pooling_conventions():
  x = jnp.zeros((1, 28, 28, 1))
  tokens = jnp.array([[5, 6, 31, 0, 0, 0, 0, 0]])  # eos (31) at position 2, padding after it
  later = tokens.at[0, 5].set(9)  # a change after the end of the text
  earlier = tokens.at[0, 1].set(9)  # a change inside it
  for name, same_after in (("clip_b32", True), ("siglip_b16", False)):
    model = models.create(name, 10, **TINY[name])
    v = model.init(jax.random.PRNGKey(0), x)
    embed = lambda t: np.asarray(model.apply(v, t, method="embed_text"))
    assert np.allclose(embed(tokens), embed(later)) == same_after, name
    assert not np.allclose(embed(tokens), embed(earlier)), name
    scale, bias = model.apply(v, method="scale_bias")
    assert float(scale) == pytest.approx(10.0 if name == "siglip_b16" else 1 / 0.07, rel=1e-5)
    assert float(bias) == (-10.0 if name == "siglip_b16" else 0.0)
