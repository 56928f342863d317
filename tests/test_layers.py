"""imgrec's convolution (im2col path forced on) against lax.conv_general_dilated / nn.Conv."""
import collections
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from imgrec.models import layers
from tests.helpers import run_python

# (batch, height, width, in, out, kernel, stride, padding, groups). Enough input channels for the
# im2col kernel gradient (taps * in >= 64; fewer go to XLA's own).
CASES = {
    "3x3 same": (2, 8, 8, 8, 6, 3, 1, "SAME", 1),
    "3x3 stride 2": (2, 9, 9, 8, 6, 3, 2, "SAME", 1),
    "1x1": (2, 5, 5, 64, 6, 1, 1, "SAME", 1),
    "1x1 stride 2": (2, 5, 5, 64, 6, 1, 2, "SAME", 1),
    "7x7 stride 2 stem": (2, 16, 16, 3, 8, 7, 2, [(3, 3), (3, 3)], 1),
    "3x3 few channels": (2, 8, 8, 3, 6, 3, 1, "SAME", 1),
    "one input channel": (2, 8, 8, 1, 6, 3, 1, "SAME", 1),
    "one input channel 5x5 stride 2": (2, 9, 9, 1, 6, 5, 2, [(2, 2), (2, 2)], 1),
    "valid": (2, 8, 8, 8, 6, 3, 1, "VALID", 1),
    "uneven padding": (2, 8, 8, 8, 6, 3, 2, [(0, 2), (1, 0)], 1),
    "grouped": (2, 8, 8, 8, 12, 3, 1, "SAME", 4),
    "depthwise": (2, 8, 8, 6, 6, 3, 1, "SAME", 6),
    "depthwise stride 2": (2, 9, 9, 6, 6, 3, 2, "SAME", 6),
    "depthwise uneven padding": (2, 8, 8, 6, 6, 3, 1, [(0, 2), (1, 0)], 6),
    "depthwise multiplier": (2, 8, 8, 4, 8, 3, 1, "SAME", 4),
    "odd spatial": (2, 11, 7, 8, 6, 3, 2, "SAME", 1),
    "batch 1": (1, 8, 8, 8, 6, 3, 1, "SAME", 1),
}


def normal(*shape, seed=0):
  # NumPy, not jax.random: each new shape would compile a jax.random program (~1 s on 2 cores).
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def random_like(shapes):
  return jax.tree.map(lambda s: 0.3 * normal(*s.shape).astype(s.dtype), shapes)


def assert_close(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)  # NumPy: no per-shape compiles
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def outputs_and_grads(*convs):
  """Each conv's output and both gradients for cotangent dy, all in one jitted function (one compile)."""
  def run(x, kernel, dy):
    results = []
    for conv in convs:
      y, vjp = jax.vjp(conv, x, kernel)
      results.append((y, *vjp(dy)))
    return results
  return jax.jit(run)


@pytest.mark.parametrize("case", CASES)
def test_conv2d_matches_lax(case, monkeypatch):
  monkeypatch.setattr(layers, "CHUNK_BYTES", 1)  # one image per scan step (batch 1: no scan)
  n, h, w, cin, cout, k, stride, padding, groups = CASES[case]
  x, kernel = normal(n, h, w, cin), normal(k, k, cin // groups, cout, seed=1)
  ref = lambda x, kernel: lax.conv_general_dilated(
      x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups)
  new = lambda x, kernel: layers.conv2d(x, kernel, stride, padding, groups, impl="im2col")
  dy = normal(*jax.eval_shape(ref, x, kernel).shape, seed=2)
  for actual, expected in zip(*outputs_and_grads(new, ref)(x, kernel, dy), strict=True):
    assert actual.shape == expected.shape
    assert_close(actual, expected)


CONVS = {
    "3x3": dict(features=6, kernel_size=(3, 3)),
    "3x3 stride 2 no bias": dict(features=6, kernel_size=(3, 3), strides=2, use_bias=False),
    "int padding": dict(features=6, kernel_size=(3, 3), padding=1),
    "kernel dilation": dict(features=6, kernel_size=(3, 3), kernel_dilation=2),
    "depthwise": dict(features=8, kernel_size=(3, 3), feature_group_count=8),
    "input dilation (lax)": dict(features=6, kernel_size=(3, 3), input_dilation=2, padding=[(1, 1), (1, 1)]),
}


@pytest.mark.parametrize("name", CONVS)
def test_conv_module_matches_nn_conv(name, monkeypatch):
  monkeypatch.setattr(layers, "IMPL", "im2col")
  x = normal(3, 9, 9, 8)
  ours, theirs = layers.Conv(**CONVS[name]), nn.Conv(**CONVS[name])
  shapes = jax.eval_shape(theirs.init, jax.random.PRNGKey(0), x)  # eval_shape: no init code to compile
  assert jax.eval_shape(ours.init, jax.random.PRNGKey(0), x) == shapes
  params = random_like(shapes)
  loss = lambda module: lambda params, x: jnp.sum(jnp.sin(module.apply(params, x)))
  both = lambda params, x: [jax.value_and_grad(loss(m), argnums=(0, 1))(params, x) for m in (theirs, ours)]
  (value_ref, grads_ref), (value, grads) = jax.jit(both)(params, x)
  assert_close(value, value_ref)
  jax.tree.map(assert_close, grads, grads_ref)


def test_conv_module_names_and_bf16(monkeypatch):
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = layers.Conv(8, (3, 3), dtype=jnp.bfloat16)(x)
      x = layers.Conv(8, (3, 3), strides=2, dtype=jnp.bfloat16)(x)
      return nn.Conv(8, (3, 3), dtype=jnp.bfloat16)(x)  # auto-names continue the same "Conv_i" sequence

  x = normal(2, 8, 8, 8)
  params = random_like(jax.eval_shape(Net().init, jax.random.PRNGKey(0), x))
  assert jax.tree.map(jnp.shape, params) == {"params": {
      "Conv_0": {"kernel": (3, 3, 8, 8), "bias": (8,)}, "Conv_1": {"kernel": (3, 3, 8, 8), "bias": (8,)},
      "Conv_2": {"kernel": (3, 3, 8, 8), "bias": (8,)}}}

  def value_and_grads(impl):
    monkeypatch.setattr(layers, "IMPL", impl)  # read when tracing: each call below traces afresh
    return jax.jit(jax.value_and_grad(lambda p: jnp.sum(Net().apply(p, x).astype(jnp.float32) ** 2)))(params)

  (value, grads), (value_ref, grads_ref) = value_and_grads("im2col"), value_and_grads("lax")
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=0.02, atol=0.02 * np.abs(b).max())  # bf16
  jax.tree.map(close, (value, grads), (value_ref, grads_ref))


POOLS = {  # (window, stride, padding, height, width)
  "2x2 tiles": (2, 2, "VALID", 8, 8),
  "2x2 odd map": (2, 2, "VALID", 7, 9),
  "3x3 s2 pad 1 (resnet stem)": (3, 2, [(1, 1), (1, 1)], 9, 8),
  "3x3 s1 same": (3, 1, "SAME", 6, 6),
  "3x3 s2 ceil-style uneven pad": (3, 2, [(0, 1), (1, 1)], 8, 7),
}


@pytest.mark.parametrize("name", POOLS)
def test_max_pool_matches_nn_max_pool(name):
  window, stride, padding, h, w = POOLS[name]
  x = jax.random.normal(jax.random.key(0), (2, h, w, 3))
  ref = lambda x: nn.max_pool(x, (window, window), (stride, stride), padding)
  ours = lambda x: layers.max_pool(x, (window, window), (stride, stride), padding, impl="im2col")
  np.testing.assert_array_equal(ours(x), ref(x))
  cot = jax.random.normal(jax.random.key(1), ref(x).shape)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * cot))(x)
  np.testing.assert_allclose(grad(ours), grad(ref), atol=1e-6)


def test_conv2d_int8_matches_lax_exactly():
  rng = np.random.default_rng(0)
  ungrouped = {name: c for name, c in CASES.items() if c[8] == 1}
  for name, (n, h, w, cin, cout, k, stride, padding, _) in ungrouped.items():
    for dilation in (1, 2) if name in ("3x3 same", "uneven padding") else (1,):
      x = jnp.asarray(rng.integers(-127, 128, (n, h, w, cin)), jnp.int8)
      kernel = jnp.asarray(rng.integers(-127, 128, (k, k, cin, cout)), jnp.int8)
      ours = layers.conv2d_int8(x, kernel, stride, padding, dilation, impl="im2col")
      ref = lax.conv_general_dilated(x, kernel, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.int32)
      assert ours.dtype == jnp.int32 and ours.shape == ref.shape, (name, dilation)
      np.testing.assert_array_equal(ours, ref, err_msg=f"{name}, dilation {dilation}")


def _ops(fn, platform, *args):
  """{stablehlo op: count} of `fn` lowered for `platform` (jax.export lowers for any platform on a CPU host)."""
  text = jax.export.export(jax.jit(fn), platforms=(platform,))(*args).mlir_module()
  return collections.Counter(re.findall(r"stablehlo\.(\w+)", text))


def test_impl_auto_picks_the_path_by_the_platform_lowered_for():
  """What the code chooses with `lax.platform_dependent`: a program lowered for cuda or tpu holds XLA's
  convolution and reduce_window; lowered for CPU, im2col taps and elementwise maxima instead. Forcing one path
  (IMPL="im2col" or "lax") makes the other platform's assertion fail."""
  x, depthwise = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 1, 4))
  conv = lambda x, k: layers.conv2d(x, k, feature_group_count=4)
  pool = lambda x: layers.max_pool(x, 2)
  for platform in ("cuda", "tpu"):
    ops = _ops(conv, platform, x, depthwise)
    assert ops["convolution"] == 1 and ops["slice"] == 0, (platform, ops)
    ops = _ops(pool, platform, x)
    assert ops["reduce_window"] == 1 and ops["maximum"] == 1, (platform, ops)  # the maximum inside the window
  ops = _ops(conv, "cpu", x, depthwise)
  assert ops["convolution"] == 0 and ops["slice"] >= 9, ops  # one strided view per kernel tap
  ops = _ops(pool, "cpu", x)
  assert ops["reduce_window"] == 0 and ops["maximum"] == 3, ops  # 2x2 window: three elementwise maxima


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from imgrec.models import layers
layers.CHUNK_BYTES = 1  # several scan steps
x = np.random.default_rng(0).standard_normal((16, 6, 6, 8), dtype=np.float32)
for groups, stride in ((1, 1), (8, 2)):  # dense (XLA's input gradient inside), depthwise (all im2col)
  k = np.random.default_rng(1).standard_normal((3, 3, 8 // groups, 8), dtype=np.float32)
  def step(impl):
    loss = lambda x, k: jnp.sum(jnp.sin(layers.conv2d(x, k, stride, "SAME", groups, impl=impl)))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  expected = step("lax")(x, k)  # one device
  for axis_type in (AxisType.Auto, AxisType.Explicit):  # imgrec.parallel's mesh; jax.make_mesh's default
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    xs, ks = jax.device_put(x, NamedSharding(mesh, P("data"))), jax.device_put(k, NamedSharding(mesh, P()))
    ours = step("im2col").lower(xs, ks).compile()
    assert "all-gather" not in ours.as_text() and "all-to-all" not in ours.as_text()  # the batch stays split
    value, (dx, dk) = ours(xs, ks)
    assert dx.sharding.spec[0] == "data", dx.sharding
    for a, b in zip((value, dx, dk), (expected[0], *expected[1])):
      assert np.allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max()), (axis_type, groups)
print("ok")
"""


def test_sharded_batch_on_8_devices():
  assert run_python(SHARDED, devices=8).stdout.strip() == "ok"


def test_grouped_conv_exports_with_a_symbolic_batch():
  """jax.export with a symbolic batch (imgrec export): the CPU path's chunking cannot divide an unknown batch,
  so it runs the batch in one step (depthwise convolutions: MobileNet, EfficientNet, ConvNeXt)."""
  rng = np.random.default_rng(0)
  kernel = jnp.asarray(rng.normal(size=(7, 7, 1, 8)), jnp.float32)
  fn = jax.jit(lambda x: layers.conv2d(x, kernel, padding=((3, 3), (3, 3)), feature_group_count=8, impl="im2col"))
  b, = jax.export.symbolic_shape("b")
  exported = jax.export.export(fn, platforms=["cpu"])(jax.ShapeDtypeStruct((b, 12, 12, 8), jnp.float32))
  x = jnp.asarray(rng.normal(size=(3, 12, 12, 8)), jnp.float32)
  expected = lax.conv_general_dilated(x, kernel, (1, 1), ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=8)
  np.testing.assert_allclose(np.asarray(exported.call(x)), np.asarray(expected), atol=1e-4)
