"""Image-text contrastive losses (pure jax), on a batch of N matching (image, text) pairs.

  sigmoid  SigLIP: every image-text pair is its own binary question (match or not), -log sigmoid(+-logit) summed
           over all N x N pairs and divided by N. Sharded (`mesh`): each device keeps its images and passes its
           texts around the ring (N/D at a time, `ppermute`), so the N x N logits never exist on one device; the
           sum is the same as on one device.
  softmax  CLIP: the matching text among the batch's texts (cross-entropy of each image's row) and the matching
           image among its images (each text's column), averaged.
Both normalise the embeddings first; `scale` is exp(t), `bias` SigLIP's b.
"""
import jax
import jax.numpy as jnp
import optax

from imgrec.models.two_tower import normalize


def _pair_sum(zimg, ztxt, scale, bias, positives):
  """-sum log sigmoid(label * logit) over a block of pairs; the diagonal is the positives when `positives`."""
  logits = scale * zimg @ ztxt.T + bias
  labels = 2 * jnp.eye(zimg.shape[0], ztxt.shape[0]) - 1 if positives else -jnp.ones_like(logits)
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits))


def sigmoid_loss(zimg, ztxt, scale, bias, mesh=None, axis="data"):
  """SigLIP's loss of N pairs (row i of each is a match); with a `mesh` whose `axis` splits the batch, computed
  block by block on the devices."""
  zimg, ztxt = normalize(zimg), normalize(ztxt)
  n = zimg.shape[0]
  if mesh is None or mesh.shape[axis] == 1:
    return _pair_sum(zimg, ztxt, scale, bias, True) / n
  devices = mesh.shape[axis]
  ring = [(i, (i + 1) % devices) for i in range(devices)]

  def per_device(zi, zt, scale, bias):
    total = _pair_sum(zi, zt, scale, bias, True)  # this device's own pairs: the only positives
    for _ in range(devices - 1):  # every other device's texts come by once: negatives only
      zt = jax.lax.ppermute(zt, axis, ring)
      total = total + _pair_sum(zi, zt, scale, bias, False)
    return jax.lax.psum(total, axis) / n

  batch, same = jax.P(axis), jax.P()
  return jax.shard_map(per_device, mesh=mesh, in_specs=(batch, batch, same, same), out_specs=same)(
      zimg, ztxt, scale, bias)


def softmax_loss(zimg, ztxt, scale):
  """CLIP's symmetric cross-entropy of N pairs (row i of each is a match)."""
  logits = scale * normalize(zimg) @ normalize(ztxt).T
  labels = jnp.arange(zimg.shape[0])
  image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
  return (image_to_text + text_to_image) / 2


def loss(convention, zimg, ztxt, scale, bias, mesh=None):
  """The loss of a two-tower convention ("siglip" | "clip")."""
  if convention == "siglip":
    return sigmoid_loss(zimg, ztxt, scale, bias, mesh)
  return softmax_loss(zimg, ztxt, scale)
