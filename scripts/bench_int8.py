"""int8 (int8 operands, int32 accumulation) vs float32 inference latency of one model, side by side.

  python scripts/bench_int8.py [--model resnet18 --kw width=16 --kw stem=cifar] [--batches 1,64] [--rounds 200]

Latency only, so the weights are a random initialisation (calibrated on random inputs): the cost of a
quantised layer does not depend on its values. Both jitted functions run once per round, alternately, so
load from other processes falls on both alike; prints the median ms of each and their ratio.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from bench_compress import latencies_ms  # noqa: E402  (scripts/ is on sys.path when run as a script)
from imgrec import compress, models


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="resnet18")
  p.add_argument("--kw", action="append", default=[], help="model kwarg KEY=VALUE (default width=16 stem=cifar)")
  p.add_argument("--shape", default="28,28,1", help="input H,W,C")
  p.add_argument("--batches", default="1,64")
  p.add_argument("--rounds", type=int, default=200)
  args = p.parse_args()
  kwargs = dict(kv.split("=", 1) for kv in args.kw) or ({"width": "16", "stem": "cifar"} if args.model == "resnet18" else {})
  kwargs = {k: int(v) if v.isdigit() else v for k, v in kwargs.items()}
  model = models.create(args.model, 10, **kwargs)
  shape = tuple(int(s) for s in args.shape.split(","))
  rng = np.random.default_rng(0)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  calib = [jnp.asarray(rng.random((16, *shape)), jnp.float32)]
  qvariables = compress.quantize.quantize_int8(variables, compress.quantize.calibrate(model, variables, calib))
  variants = {"float32": (lambda v, x: model.apply(v, x, train=False), variables),
              "int8": (lambda v, x: compress.quantize.apply_int8(model, v, x), qvariables)}
  print(f"{args.model} {kwargs} input {shape}, jax {jax.__version__} on {jax.devices()[0].device_kind}")
  for batch in (int(b) for b in args.batches.split(",")):
    x = jnp.asarray(rng.random((batch, *shape)), jnp.float32)
    m = latencies_ms(variants, x, args.rounds if batch == 1 else max(10, args.rounds // 10))
    print(f"batch {batch}: float32 {m['float32']:.3f} ms, int8 {m['int8']:.3f} ms, int8/float32 {m['int8'] / m['float32']:.2f}x")


if __name__ == "__main__":
  main()
