"""torchvision VGG-16(-BN), MobileNetV2, EfficientNet-B0 and ViT-B/16 weights -> imgrec: same logits.

Each reference is written here in torch with torchvision's module structure, so its `state_dict()`
keys and shapes are torchvision's (torchvision itself is not needed; skipped without torch). The
full architectures are converted (full key sets and shapes); inputs are small where the
architecture allows (VGG 32 px, MobileNetV2 / EfficientNet 64 px), ViT-B/16 runs at its 224 px.
Check: max |imgrec - torch| <= 1e-4 x max |torch logit| (float32, eval mode), where BatchNorm
statistics, affine parameters, LayerNorms and the class token are all randomised so they matter.
"""
import collections
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from imgrec import checkpoint_import, models, transfer, workdir as wd
from imgrec.checkpoint_import import formats
from imgrec.errors import UserError
from tests.helpers import ROOT

torch = pytest.importorskip("torch")
nn = torch.nn
TOL = 1e-4  # relative to the largest |logit|


def cba(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU6):
  """torchvision.ops.Conv2dNormActivation: Sequential(conv (pad (k-1)/2, no bias), BatchNorm2d, act)."""
  layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
  return nn.Sequential(*layers, *([act(inplace=True)] if act else []))


class TorchVGG(nn.Module):
  """torchvision.models.vgg16 / vgg16_bn (configuration "D")."""

  def __init__(self, batch_norm, num_classes):
    super().__init__()
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
        continue
      layers += [nn.Conv2d(cin, v, 3, padding=1), *([nn.BatchNorm2d(v)] if batch_norm else []), nn.ReLU(True)]
      cin = v
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5),
                                    nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(4096, num_classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class InvertedResidual(nn.Module):
  """torchvision.models.mobilenetv2.InvertedResidual."""

  def __init__(self, cin, cout, stride, t):
    super().__init__()
    hidden = int(round(cin * t))
    self.use_res_connect = stride == 1 and cin == cout
    layers = [cba(cin, hidden, 1)] if t != 1 else []
    layers += [cba(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
    self.conv = nn.Sequential(*layers)

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TorchMobileNetV2(nn.Module):
  """torchvision.models.mobilenet_v2 (width 1.0)."""

  def __init__(self, num_classes):
    super().__init__()
    features, cin = [cba(3, 32, stride=2)], 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
      for i in range(n):
        features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
        cin = c
    features.append(cba(cin, 1280, 1))
    self.features = nn.Sequential(*features)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

  def forward(self, x):
    x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
    return self.classifier(torch.flatten(x, 1))


class SqueezeExcitation(nn.Module):
  """torchvision.ops.SqueezeExcitation with EfficientNet's SiLU."""

  def __init__(self, channels, squeeze):
    super().__init__()
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc1 = nn.Conv2d(channels, squeeze, 1)
    self.fc2 = nn.Conv2d(squeeze, channels, 1)
    self.activation = nn.SiLU(inplace=True)
    self.scale_activation = nn.Sigmoid()

  def forward(self, x):
    return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x))))) * x


class MBConv(nn.Module):
  """torchvision.models.efficientnet.MBConv (stochastic depth: identity in eval, no parameters)."""

  def __init__(self, t, k, stride, cin, cout):
    super().__init__()
    self.use_res_connect = stride == 1 and cin == cout
    expanded = cin * t
    layers = [cba(cin, expanded, 1, act=nn.SiLU)] if expanded != cin else []
    layers += [cba(expanded, expanded, k, stride, expanded, act=nn.SiLU), SqueezeExcitation(expanded, max(1, cin // 4)),
               cba(expanded, cout, 1, act=None)]
    self.block = nn.Sequential(*layers)

  def forward(self, x):
    return self.block(x) + x if self.use_res_connect else self.block(x)


class TorchEfficientNetB0(nn.Module):
  """torchvision.models.efficientnet_b0 (BatchNorm2d defaults: eps 1e-5)."""

  def __init__(self, num_classes):
    super().__init__()
    layers = [cba(3, 32, 3, 2, act=nn.SiLU)]
    for t, k, s, cin, cout, n in ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                                  (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)):
      layers.append(nn.Sequential(*[MBConv(t, k, s if i == 0 else 1, cin if i == 0 else cout, cout) for i in range(n)]))
    layers.append(cba(320, 1280, 1, act=nn.SiLU))
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(1280, num_classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class EncoderBlock(nn.Module):
  """torchvision.models.vision_transformer.EncoderBlock (pre-LN, eps 1e-6; MLP = Linear GELU Dropout Linear Dropout)."""

  def __init__(self, heads, dim, mlp_dim):
    super().__init__()
    self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
    self.self_attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
    self.dropout = nn.Dropout(0.0)
    self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, dim),
                             nn.Dropout(0.0))

  def forward(self, inputs):
    x = self.ln_1(inputs)
    x, _ = self.self_attention(x, x, x, need_weights=False)
    x = self.dropout(x) + inputs
    return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
  def __init__(self, seq_length, layers, heads, dim, mlp_dim):
    super().__init__()
    self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))
    self.dropout = nn.Dropout(0.0)
    self.layers = nn.Sequential(collections.OrderedDict(
        (f"encoder_layer_{i}", EncoderBlock(heads, dim, mlp_dim)) for i in range(layers)))
    self.ln = nn.LayerNorm(dim, eps=1e-6)

  def forward(self, x):
    return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class TorchViT(nn.Module):
  """torchvision.models.vit_b_16 (image 224, patch 16, 12 layers, 12 heads, width 768, MLP 3072)."""

  def __init__(self, num_classes, image_size=224, patch=16, layers=12, heads=12, dim=768, mlp_dim=3072):
    super().__init__()
    self.patch, self.dim = patch, dim
    self.conv_proj = nn.Conv2d(3, dim, patch, patch)
    self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.encoder = Encoder((image_size // patch) ** 2 + 1, layers, heads, dim, mlp_dim)
    self.heads = nn.Sequential(collections.OrderedDict(head=nn.Linear(dim, num_classes)))

  def forward(self, x):
    n = x.shape[0]
    x = self.conv_proj(x).reshape(n, self.dim, -1).permute(0, 2, 1)
    x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
    return self.heads(self.encoder(x)[:, 0])


def randomise(ref, x):
  """Random weights at a scale that keeps activations O(1), and random affine parameters. Each
  BatchNorm's running statistics are its input's batch statistics in the eval-mode forward pass of
  `x` (so the next layers see them applied), perturbed so that every statistic matters; channels
  that hardly vary get the mean variance (their 1/sqrt(var) would amplify float32 rounding)."""
  with torch.no_grad():
    for m in ref.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.normal_(0, (2.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.uniform_(-0.1, 0.1)
      elif isinstance(m, nn.MultiheadAttention):  # q, k, v projections: one (3D, D) matrix, not a Linear
        m.in_proj_weight.normal_(0, m.in_proj_weight.shape[1] ** -0.5)
        m.in_proj_bias.uniform_(-0.1, 0.1)
      elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
    for p in ref.parameters():
      if p.ndim == 3:  # class token, position embedding
        p.normal_(0, 0.5)

    def calibrate(m, inputs):
      var = inputs[0].var((0, 2, 3))
      var = torch.maximum(var, var.mean())
      m.running_var.copy_(var * torch.empty_like(var).uniform_(0.5, 1.5))
      m.running_mean.copy_(inputs[0].mean((0, 2, 3)) + 0.3 * var.sqrt() * torch.randn_like(var))

    hooks = [m.register_forward_pre_hook(calibrate) for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
    if hooks:
      ref.eval()(x)
    for h in hooks:
      h.remove()
  return ref.eval()


def check(arch, make, size, tmp_path, num_classes=7):
  """Converts the saved state_dict of `make(num_classes)` with `arch`; returns (max |diff|, max |logit|)
  on two random `size` px images."""
  torch.manual_seed(0)
  with torch.device("meta"):  # no default initialisation (seconds for VGG): `randomise` sets every value
    ref = make(num_classes).to_empty(device="cpu")
  x = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  for t in ref.state_dict().values():
    t.fill_(float("nan") if t.is_floating_point() else 0)
  randomise(ref, xt)
  assert all(t.isfinite().all() for t in ref.state_dict().values())
  path = str(tmp_path / f"{arch}.pth")
  torch.save(ref.state_dict(), path)
  with torch.no_grad():
    expected = ref(xt).numpy()
  n_keys = sum(not k.endswith("num_batches_tracked") for k in ref.state_dict())
  del ref

  info, _ = checkpoint_import.import_checkpoint(path, str(tmp_path / "w"), arch)
  flat = wd.load_params(str(tmp_path / "w"))
  assert json.loads((tmp_path / "w" / "import.json").read_text())["model"] == info["model"]
  assert info["num_classes"] == num_classes and len(flat) == n_keys  # every torch tensor became one imgrec tensor
  model = models.create(info["model"]["name"], num_classes, **info["model"]["kwargs"])
  target = wd.flatten(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[:1], train=False)))
  with np.load(tmp_path / "w" / "params.npz") as f:  # what was written (its values are `flat`'s)
    assert sorted(f.files) == sorted(flat)
  merged, rows = transfer.merge({k: np.zeros(v.shape, v.dtype) for k, v in target.items()}, flat)
  del flat
  assert {r[1] for r in rows} == {"loaded"}, [r for r in rows if r[1] != "loaded"]  # every name, both ways
  got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(wd.unflatten(merged), x))
  err, scale = float(np.abs(got - expected).max()), float(np.abs(expected).max())
  print(f"{arch}: max |diff| {err:.2e}, max |logit| {scale:.3g}")
  assert np.abs(expected[0] - expected[1]).max() > 0.05 * scale  # the logits depend on the image
  assert got.shape == expected.shape and err <= TOL * scale, (err, scale)
  return err, scale


@pytest.mark.parametrize("arch", ["vgg16", "vgg16_bn"])
def test_vgg16_matches_torch(arch, tmp_path):
  check(arch, lambda n: TorchVGG(arch.endswith("_bn"), n), 32, tmp_path)  # 32 px: 1x1 after the last pool, then 7x7


def test_mobilenet_v2_matches_torch(tmp_path):
  check("mobilenet_v2", TorchMobileNetV2, 64, tmp_path)


def test_efficientnet_b0_matches_torch(tmp_path):
  check("efficientnet_b0", TorchEfficientNetB0, 64, tmp_path)


def test_vit_b_16_matches_torch(tmp_path):
  check("vit_b_16", TorchViT, 224, tmp_path)


@pytest.fixture(scope="module")
def mobilenet_sd():
  torch.manual_seed(0)
  return {k: v.numpy() for k, v in TorchMobileNetV2(5).state_dict().items()}


def test_bad_state_dicts_name_the_key(mobilenet_sd, tmp_path):
  convert = lambda sd, arch="mobilenet_v2": checkpoint_import.convert(formats.from_arrays(sd, "sd"), arch)
  sd = dict(mobilenet_sd)
  del sd["features.3.conv.1.1.running_var"]
  with pytest.raises(UserError, match=r"1 missing \(batch_stats/features_3/dw/bn/var <- features\.3\.conv\.1\.1\.running_var"):
    convert(sd)
  sd = dict(mobilenet_sd, **{"features.5.conv.1.0.weight": np.zeros((192, 1, 5, 5), np.float32)})
  with pytest.raises(UserError, match=r"1 wrong shape \(.*\(3, 3, 1, 192\) <- features\.5\.conv\.1\.0\.weight \(192, 1, 5, 5\)"):
    convert(sd)
  sd = dict(mobilenet_sd, **{"features.19.0.weight": np.zeros((8, 8, 1, 1), np.float32)})
  with pytest.raises(UserError, match=r"1 unexpected \(features\.19\.0\.weight \(8, 8, 1, 1\)"):
    convert(sd)
  with pytest.raises(UserError, match=r"sd is a torchvision mobilenet_v2 state_dict, not vgg16"):
    convert(mobilenet_sd, "vgg16")
  with pytest.raises(UserError, match=r"unknown model 'vgg99'"):
    checkpoint_import.import_checkpoint(str(tmp_path / "none.pth"), str(tmp_path / "w"), "vgg99")
  with pytest.raises(UserError, match="not found"):
    checkpoint_import.import_checkpoint(str(tmp_path / "none.pth"), str(tmp_path / "w2"), "vgg16")


def test_cli_writes_params_and_says_how_to_train(mobilenet_sd, tmp_path):
  path = str(tmp_path / "mnv2.pth")
  torch.save({k: torch.from_numpy(v) for k, v in mobilenet_sd.items()}, path)
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "imgrec", "import-torchvision", "mobilenet_v2", path, "--workdir",
                         str(tmp_path / "w")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "--config.model.name=mobilenet_v2 --config.model.kwargs.stem=imagenet" in proc.stdout
  info = json.loads((tmp_path / "w" / "import.json").read_text())
  assert info["model"] == {"name": "mobilenet_v2", "kwargs": {"stem": "imagenet"}} and info["num_classes"] == 5
  assert len(np.load(tmp_path / "w" / "params.npz").files) == sum(not k.endswith("tracked") for k in mobilenet_sd)
