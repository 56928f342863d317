"""torchvision ResNet weights -> imgrec: same logits as the torch forward pass (eval mode, float32).

The reference is a ResNet written here in torch with torchvision's module names (torchvision
itself is not needed); skipped when torch is not installed.
"""
import jax
import numpy as np
import pytest

from imgrec import checkpoint_import, models, transfer, workdir as wd

torch = pytest.importorskip("torch")
nn = torch.nn


class Basic(nn.Module):
  expansion = 1

  def __init__(self, cin, width, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.downsample = None
    if stride != 1 or cin != width:
      self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

  def forward(self, x):
    y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, width, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(width * 4)
    self.downsample = None
    if stride != 1 or cin != width * 4:
      self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(y)))))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
  """torchvision.models.ResNet's structure and state_dict names."""

  def __init__(self, block, layers, num_classes):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for i, n in enumerate(layers):
      blocks = []
      for j in range(n):
        blocks.append(block(cin, 64 * 2**i, 2 if i > 0 and j == 0 else 1))
        cin = 64 * 2**i * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    for i in range(4):
      x = getattr(self, f"layer{i + 1}")(x)
    return self.fc(torch.flatten(x.mean((2, 3)), 1))


@pytest.mark.parametrize("arch,block,layers", [("resnet18", Basic, (2, 2, 2, 2)),
                                               ("resnet50", Bottleneck, (3, 4, 6, 3))])
def test_converted_resnet_matches_torch(arch, block, layers, tmp_path):
  torch.manual_seed(0)
  ref = TorchResNet(block, layers, num_classes=7)
  with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
    for m in ref.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  ref.eval()
  path = str(tmp_path / f"{arch}.pth")
  torch.save(ref.state_dict(), path)
  assert set(ref.state_dict()) >= {"layer1.0.conv1.weight", "fc.weight", "bn1.running_var"}

  info, _ = checkpoint_import.import_checkpoint(path, str(tmp_path / "w"), arch)
  assert info["model"] == {"name": arch, "kwargs": {"stem": "imagenet"}} and info["layout"] == "torch resnet"
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()

  model = models.create(arch, 7, stem="imagenet")
  target = wd.flatten(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[:1], train=False)))
  loaded = transfer.load_source(str(tmp_path / "w"))
  merged, rows = transfer.merge({k: np.zeros(v.shape, v.dtype) for k, v in target.items()}, loaded)
  assert {r[1] for r in rows} == {"loaded"}, [r for r in rows if r[1] != "loaded"]  # every name, both ways
  got = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(wd.unflatten(merged), x))
  assert got.shape == (2, 7) and len(loaded) == len(target)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
