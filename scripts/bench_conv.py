"""Times a convolution's forward pass and gradients: plain lax vs imgrec's CPU convolution.

  python scripts/bench_conv.py            # the three headline cases
  python scripts/bench_conv.py --all      # also 1x1, 7x7 stem, grouped, bf16

Each function is jitted and warmed up, then the lax and imgrec versions run alternately
(so that load from other processes hits both alike); prints the median and min in ms.
"""
import argparse
import time

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, without an install

import jax
import jax.numpy as jnp
import numpy as np

from imgrec.models.layers import conv2d

# name: (batch, height=width, in channels, out channels, kernel, stride, groups, dtype)
CASES = {
    "3x3 32->64 s1": (256, 28, 32, 64, 3, 1, 1, "float32"),
    "3x3 64->128 s2": (256, 28, 64, 128, 3, 2, 1, "float32"),
    "dw3x3 64 s1": (256, 28, 64, 64, 3, 1, 64, "float32"),
}
MORE = {
    "dw3x3 64 s2": (256, 28, 64, 64, 3, 2, 64, "float32"),
    "1x1 64->128 s1": (256, 28, 64, 128, 1, 1, 1, "float32"),
    "7x7 3->64 s2 stem": (64, 112, 3, 64, 7, 2, 1, "float32"),
    "3x3 64->64 g4": (256, 28, 64, 64, 3, 1, 4, "float32"),
    "3x3 32->64 s1 bf16": (256, 28, 32, 64, 3, 1, 1, "bfloat16"),
}


def functions(impl, stride, groups):
  conv = lambda x, k: conv2d(x, k, stride, "SAME", groups, impl=impl)
  grad_x = lambda x, k, dy: jax.vjp(lambda x: conv(x, k), x)[1](dy)[0]
  grad_k = lambda x, k, dy: jax.vjp(lambda k: conv(x, k), k)[1](dy)[0]
  # What a training step pays: the forward pass (its value is used) and both gradients.
  train = lambda x, k, dy: jax.value_and_grad(lambda x, k: jnp.vdot(conv(x, k), dy).real, (0, 1))(x, k)
  return {"forward": jax.jit(lambda x, k, dy: conv(x, k)), "input grad": jax.jit(grad_x),
          "kernel grad": jax.jit(grad_k), "fwd+both grads": jax.jit(train)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=7, help="timed runs per function, after one warm-up")
  parser.add_argument("--all", action="store_true", help="also 1x1, 7x7 stem, grouped, bf16")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0].device_kind}")
  print(f"{'case':20s} {'op':15s} {'lax ms':>16s} {'imgrec ms':>16s} {'speed-up':>9s}   (median / min)")
  cases = {**CASES, **(MORE if args.all else {})}
  for name, (n, hw, cin, cout, ksize, stride, groups, dtype) in cases.items():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (n, hw, hw, cin), dtype)
    k = jax.random.normal(keys[1], (ksize, ksize, cin // groups, cout), dtype) * 0.1
    dy = jax.random.normal(keys[2], conv2d(x, k, stride, "SAME", groups, impl="lax").shape, dtype)
    ref, new = functions("lax", stride, groups), functions("im2col", stride, groups)
    for op in ref:
      times = {impl: [] for impl in ("lax", "im2col")}
      for impl, f in (("lax", ref[op]), ("im2col", new[op])):
        jax.block_until_ready(f(x, k, dy))  # compile and warm up
      for _ in range(args.runs):
        for impl, f in (("lax", ref[op]), ("im2col", new[op])):
          start = time.perf_counter()
          jax.block_until_ready(f(x, k, dy))
          times[impl].append(1e3 * (time.perf_counter() - start))
      (lax_med, lax_min), (new_med, new_min) = [(np.median(t), np.min(t)) for t in times.values()]
      print(f"{name:20s} {op:15s} {lax_med:7.1f} / {lax_min:6.1f} {new_med:7.1f} / {new_min:6.1f} "
            f"{lax_med / new_med:8.1f}x", flush=True)


if __name__ == "__main__":
  main()
