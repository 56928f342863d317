"""Contrastive losses against open_clip's SigLipLoss and ClipLoss on random embeddings, and the sigmoid loss
sharded over 8 fake devices (texts passed around the ring) equal to one device, value and gradients."""
import numpy as np
import pytest

from imgrec.tasks.image_text import losses
from tests import text_helpers as th
from tests.helpers import run_python

torch = pytest.importorskip("torch")


def embeddings(n=12, d=16, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)


def unit(a):
  return torch.nn.functional.normalize(torch.from_numpy(a), dim=-1)


@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (3.0, 0.5)])
def test_sigmoid_loss_matches_open_clip(scale, bias):
  zi, zt = embeddings()
  ref = th.open_clip_file("loss").SigLipLoss()(unit(zi), unit(zt), torch.tensor(scale), torch.tensor(bias)).item()
  mine = float(losses.sigmoid_loss(zi, zt, scale, bias))
  assert mine == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("scale", [1 / 0.07, 2.0])
def test_softmax_loss_matches_open_clip(scale):
  zi, zt = embeddings(seed=1)
  ref = th.open_clip_file("loss").ClipLoss()(unit(zi), unit(zt), torch.tensor(scale)).item()
  mine = float(losses.softmax_loss(zi, zt, scale))
  assert mine == pytest.approx(ref, rel=1e-5)
  assert float(losses.loss("clip", zi, zt, scale, 0.0)) == mine


def test_sigmoid_loss_sharded_equals_one_device():
  run_python("""
import jax, jax.numpy as jnp, numpy as np
from imgrec.tasks.image_text import losses
assert jax.device_count() == 8
rng = np.random.default_rng(0)
zi, zt = (jnp.asarray(rng.normal(size=(32, 16)), jnp.float32) for _ in range(2))
mesh = jax.make_mesh((8,), ("data",))
shard = jax.NamedSharding(mesh, jax.P("data"))
zi_s, zt_s = jax.device_put(zi, shard), jax.device_put(zt, shard)
f = lambda m: jax.jit(jax.value_and_grad(lambda a, b, s, c: losses.sigmoid_loss(a, b, s, c, m), argnums=(0, 1, 2, 3)))
(v1, g1), (v8, g8) = f(None)(zi, zt, 10.0, -10.0), f(mesh)(zi_s, zt_s, 10.0, -10.0)
np.testing.assert_allclose(float(v8), float(v1), rtol=1e-6)
for a, b in zip(g8, g1):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
hlo = f(mesh).lower(zi_s, zt_s, 10.0, -10.0).as_text()
assert "collective_permute" in hlo or "collective-permute" in hlo  # the texts travel the ring
print("ok", float(v1))
""", devices=8)
