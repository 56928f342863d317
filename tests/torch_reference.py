"""timm and Hugging Face transformers as reference models, with random weights (nothing is downloaded).

torchvision (which timm and transformers import) ships on PyPI built against the CUDA torch; beside the CPU
torch wheel its compiled ops cannot load, and torchvision <= 0.29 then fails at import on two unguarded
`register_fake("torchvision::nms" / "qnms")` calls. Defining those two op schemas first lets it import; the ops
themselves (detection NMS) are never called here. With a torchvision whose ops load, nothing is defined.
"""
import importlib.util
import os

import numpy as np
import torch


def _torchvision_importable():
  spec = importlib.util.find_spec("torchvision")
  if spec is None:
    return
  try:
    torch.ops.load_library(os.path.join(os.path.dirname(spec.origin), "_C.so"))
  except OSError:
    for op in ("nms", "qnms"):
      torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


_torchvision_importable()
import timm  # noqa: E402  (after the op schemas above)
import transformers  # noqa: E402


def randomise(model, x=None, seed=0):
  """Every parameter and buffer random at a scale that keeps activations O(1): weights ~ N(0, 1/fan_in),
  biases, norms' affine parameters, BatchNorm statistics, layer scales and tokens all non-trivial. With
  images `x` (NHWC numpy), each BatchNorm's running statistics are then its input's statistics on them,
  perturbed (so deep BatchNorm networks keep a signal that depends on the image, and every statistic matters)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
      if not t.is_floating_point():
        continue
      leaf = name.rsplit(".", 1)[-1]
      if leaf == "running_var":
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      elif leaf == "running_mean":
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
      elif t.ndim >= 2 and "embed" not in name and "token" not in name:
        t.copy_(torch.randn(t.shape, generator=g) * t[0].numel() ** -0.5)
      elif leaf in ("gamma", "layer_scale_parameter") or ".ls" in name:
        t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.25)
      elif leaf == "weight":  # norms
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      else:  # biases, tokens, position embeddings
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    if x is not None:
      def calibrate(m, inputs):
        var = inputs[0].var((0, 2, 3))
        var = torch.maximum(var, var.mean())  # a channel that hardly varies would amplify float32 rounding
        m.running_var.copy_(var * (torch.rand(var.shape, generator=g) + 0.5))
        m.running_mean.copy_(inputs[0].mean((0, 2, 3)) + 0.3 * var.sqrt() * torch.randn(var.shape, generator=g))
      hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d)]
      logits(model.eval(), x)  # eval mode: each layer sees the statistics set before it
      for h in hooks:
        h.remove()
  return model.eval()


def logits(model, x):
  """The model's logits for NHWC float32 numpy images."""
  with torch.no_grad():
    out = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
  return (out.logits if hasattr(out, "logits") else out).numpy()


def state_dict(model):
  return {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
__all__ = ["timm", "transformers", "randomise", "logits", "state_dict"]
