"""Training throughput of imgrec's real train step, the code path of `imgrec train`.

  python scripts/bench_train.py                      # the reference set: resnet50@224 b256, vit_s16@224 b256,
                                                     # resnet18 (CIFAR stem) @32 b512, bf16 compute
  python scripts/bench_train.py --model resnet18 --size 32 --batch 512 --dtype bfloat16 [--model ...]
  python scripts/bench_train.py --model small_cnn --size 28 --channels 1 --batch 128 --pipeline fashion_mnist
  python scripts/bench_train.py --compile-cache --model small_cnn --size 8 --channels 1 --batch 32

Each model: `workdir.build` (state initialised sharded) + classification's `make_train_step` (optimiser, BatchNorm,
normalisation of uint8 on device) jitted with donation exactly as `train.train` does, fed one synthetic
uint8 batch that stays on the devices. Prints, per model: img/s (median over windows of timed steps after
warm-up), compile time (lower + compile of the train step, persistent cache off unless --cache-dir),
forward GFLOPs per image (XLA cost analysis, batch 1), MFU = img/s x 3 x forward FLOPs / peak FLOP/s
(peak from --peak-flops or a table of known accelerators; omitted when unknown, e.g. on CPU) and peak
device memory (where the device reports it).

--pipeline SOURCE also runs the real input pipeline (imgrec.data.pipeline.train_batches on any
`data.source`: fashion_mnist, folder:DIR, ...) into the same compiled step, and reports it as a fraction
of the synthetic figure at that source's image shape. `--pipeline jpeg` generates scripts/bench_data.py's
ImageNet-like JPEG folder (--jpeg-images, not kept) and feeds it with decode|random_resized_crop(SIZE)|flip
decoded in --workers processes:

  python scripts/bench_train.py --model resnet50 --size 224 --batch 128 --pipeline jpeg --workers 2

--profile DIR traces --profile-steps more steps of each model after the timed ones (jax.profiler, one
StepTraceAnnotation per step, as `imgrec train --config.profile=START:STOP` does) into DIR/MODEL/: open it
in TensorBoard's Profile tab (tensorboard --logdir DIR) or perfetto_trace.json.gz in ui.perfetto.dev.

--compile-cache runs two fresh processes one after the other on an empty temporary cache directory and
prints each one's time to its first finished train step (since launch, and since its imports finished),
with the persistent compilation cache's hits and misses: the first is cold, the second warm.
Nothing here assumes a CPU: run it unchanged on a GPU.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_data  # noqa: E402  (scripts/ is on sys.path when run as a script)

REFERENCE = [  # (model, size, batch, kwargs): the reference table
    ("resnet50", 224, 256, {}),
    ("vit_s16", 224, 256, {}),
    ("resnet18", 32, 512, {"stem": "cifar"}),
]

# Dense peak FLOP/s per device: (device_kind substring, bf16/fp16, float32 as XLA runs it by default
# (TF32 tensor cores on NVIDIA)). The first match wins, so specific names come first.
PEAKS = [
    ("H100 PCIe", 756e12, 378e12),
    ("H100", 989.4e12, 494.7e12),  # SXM
    ("H200", 989.4e12, 494.7e12),
    ("GH200", 989.4e12, 494.7e12),
    ("A100", 312e12, 156e12),
    ("L4", 121e12, 60e12),
    ("TPU v4", 275e12, 275e12),
    ("TPU v5 lite", 197e12, 197e12),
    ("TPU v5p", 459e12, 459e12),
    ("TPU v6", 918e12, 918e12),
]


def peak_flops(device, dtype, override):
  if override:
    return override
  for name, half, single in PEAKS:
    if name.lower() in device.device_kind.lower():
      return single if dtype == "float32" else half
  return None


def setup(model, size, channels, batch, dtype, classes, kwargs, optim):
  """(cfg, info) for a synthetic run: the config defaults with this model, batch and optimiser."""
  from imgrec import config as config_lib
  cfg = config_lib.defaults()
  cfg.model.name, cfg.model.dtype, cfg.batch_size = model, dtype, batch
  cfg.optim.name = optim
  for k, v in kwargs.items():
    cfg.model.kwargs[k] = v
  cfg.steps = 10 ** 6  # only sets the schedule's length
  info = {"source": "synthetic", "class_names": [str(i) for i in range(classes)],
          "image_shape": [size, size, channels], "mean": [0.5] * channels, "std": [0.25] * channels,
          "num_train": batch * 1000}
  return cfg, info


def compiled_step(cfg, info, mesh):
  """(model, initial state, compiled train step, compile seconds, batch sharding): as in train.train."""
  import jax
  from imgrec import parallel, workdir as wd
  from imgrec.tasks import classification
  built = wd.build(cfg, info, mesh)
  model, tx, init, abstract, shardings = built.model, built.tx, built.init, built.abstract, built.shardings
  state = jax.jit(init, out_shardings=shardings)()
  batch_sharding = parallel.batch_sharding(mesh)
  step = jax.jit(classification.make_train_step(model, tx, info, cfg),
                 in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None), donate_argnums=(0,))
  h, w, c = info["image_shape"]
  batch_shape = {"image": jax.ShapeDtypeStruct((cfg.batch_size, h, w, c), jax.numpy.uint8, sharding=batch_sharding),
                 "label": jax.ShapeDtypeStruct((cfg.batch_size,), jax.numpy.int32, sharding=batch_sharding)}
  t = time.perf_counter()
  compiled = step.lower(abstract, batch_shape).compile()
  return model, state, compiled, time.perf_counter() - t, batch_sharding


def synthetic_batch(cfg, info, sharding):
  """Random uint8 images and labels, made on the devices and left there."""
  import jax
  import jax.numpy as jnp
  h, w, c = info["image_shape"]
  n, classes = cfg.batch_size, len(info["class_names"])

  def make(key):
    k1, k2 = jax.random.split(key)
    return {"image": jax.random.randint(k1, (n, h, w, c), 0, 256, jnp.int32).astype(jnp.uint8),
            "label": jax.random.randint(k2, (n,), 0, classes, jnp.int32)}
  return jax.jit(make, out_shardings=sharding)(jax.random.key(0))


def timed_loop(step, state, batches, warmup, windows, window, batch_size):
  """Runs `warmup` steps, then `windows` windows of `window` steps, waiting for the device only at
  window ends; returns (state, median img/s over windows, all windows' img/s)."""
  import jax
  metrics = None
  for _ in range(warmup):
    state, metrics = step(state, next(batches))
  jax.block_until_ready(metrics)
  rates = []
  for _ in range(windows):
    t = time.perf_counter()
    for _ in range(window):
      state, metrics = step(state, next(batches))
    jax.block_until_ready(metrics)
    rates.append(window * batch_size / (time.perf_counter() - t))
  return state, statistics.median(rates), rates


def peak_memory():
  import jax
  stats = [d.memory_stats() for d in jax.local_devices()]
  peaks = [s.get("peak_bytes_in_use") for s in stats if s]
  return max(peaks) if peaks and all(p is not None for p in peaks) else None


def bench_model(args, name, size, batch, kwargs):
  import itertools
  import jax
  from imgrec import parallel
  from imgrec.models import profile
  cfg, info = setup(name, size, args.channels, batch, args.dtype, args.classes, kwargs, args.optim)
  mesh = parallel.make_mesh()
  parallel.check_batch(batch)
  ds = None
  if args.pipeline:  # the synthetic run takes the source's image shape, so that the two compare
    from imgrec import workdir as wd
    from imgrec.data import sources
    cfg.data.source = args.pipeline
    if args.pipeline == "jpeg":
      cfg.data.source = "folder:" + bench_data.generate(os.path.join(args.jpeg_dir, "photos"), args.jpeg_images, 10)
      cfg.data.norm = "imagenet"
    cfg.data.image_size = size if cfg.data.source.startswith("folder:") else 0
    cfg.data.workers = args.workers
    ds = sources.load(cfg.data)
    info = {**wd.data_info(cfg, ds), "num_train": info["num_train"]}
    info["class_names"] = list(ds.class_names)
  model, state, step, compile_s, sharding = compiled_step(cfg, info, mesh)
  fwd = profile.forward_flops(model, profile.abstract_variables(model, info["image_shape"]), info["image_shape"])
  batch_arrays = synthetic_batch(cfg, info, sharding)
  state, img_s, rates = timed_loop(step, state, itertools.repeat(batch_arrays), args.warmup, args.windows,
                                   args.window, batch)
  if args.profile:
    from imgrec import tracking
    profiler = tracking.Profiler(f"0:{args.profile_steps}", os.path.join(args.profile, name))
    for i in range(args.profile_steps):
      state, _ = profiler.step(step, i, state, batch_arrays)
  device = jax.devices()[0]
  peak = peak_flops(device, args.dtype, args.peak_flops)
  row = {"model": name, "kwargs": kwargs, "input": info["image_shape"], "batch": batch, "dtype": args.dtype,
         "optim": args.optim, "devices": jax.device_count(), "device_kind": device.device_kind,
         "img_per_sec": img_s, "img_per_sec_windows": [round(r, 1) for r in rates],
         "step_ms": 1e3 * batch / img_s, "compile_s": compile_s, "fwd_gflops_per_img": fwd / 1e9,
         "mfu": img_s * 3 * fwd / (peak * jax.device_count()) if peak else None,
         "peak_flops_per_device": peak, "peak_memory_gb": (peak_memory() or 0) / 1e9 or None}
  if ds is not None:
    from imgrec.data import pipeline
    split = ds.split(cfg.data.train_split)
    total = args.warmup + args.windows * args.window
    stream = pipeline.train_batches(split, batch, cfg.seed, 0, total, sharding, args.prefetch)
    batches = (b for _, b in stream)
    state, pipe_img_s, pipe_rates = timed_loop(step, state, batches, args.warmup, args.windows, args.window, batch)
    stream.close()
    row.update(pipeline=args.pipeline, pipeline_img_per_sec=pipe_img_s,
               pipeline_img_per_sec_windows=[round(r, 1) for r in pipe_rates],
               pipeline_fraction=pipe_img_s / img_s)
  del state
  return row


def first_step_child(args):
  """One fresh process: imports, cache set-up, state, compile, one step; prints its timings as JSON."""
  t_start = float(os.environ["BENCH_T0"])
  import jax
  from jax import monitoring
  from imgrec import compile_cache, parallel
  t_imported = time.time()
  events = {"hits": 0, "misses": 0}

  def listen(event, **kw):
    if event.endswith("/cache_hits"):
      events["hits"] += 1
    elif event.endswith("/cache_misses"):
      events["misses"] += 1
  monitoring.register_event_listener(listen)
  cache_dir = compile_cache.enable(args.cache_dir)
  name, size, batch, kwargs = args.runs[0]
  cfg, info = setup(name, size, args.channels, batch, args.dtype, args.classes, kwargs, args.optim)
  _, state, step, compile_s, sharding = compiled_step(cfg, info, parallel.make_mesh())
  state, metrics = step(state, synthetic_batch(cfg, info, sharding))
  jax.block_until_ready(metrics)
  t_done = time.time()
  print(json.dumps({"cache_dir": cache_dir, "since_launch_s": t_done - t_start, "imports_s": t_imported - t_start,
                    "after_imports_s": t_done - t_imported, "train_step_compile_s": compile_s, **events}))


def compile_cache_bench(args, argv):
  """Cold then warm: the same child twice on one fresh cache directory."""
  rows = []
  with tempfile.TemporaryDirectory(prefix="imgrec_jax_cache_") as cache:
    child = [a for a in argv if a != "--compile-cache"]
    for label in ("cold", "warm"):
      env = dict(os.environ, BENCH_T0=repr(time.time()))
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), *child, "--child-first-step",
                             "--cache-dir", cache], env=env, capture_output=True, text=True)
      if proc.returncode:
        raise SystemExit(f"child failed:\n{proc.stderr[-4000:]}")
      row = json.loads(proc.stdout.strip().splitlines()[-1])
      row.update(run=label, cache_entries=sum(1 for f in os.listdir(cache) if f.endswith("-cache")))
      rows.append(row)
      print(json.dumps(row), flush=True)
  name, size, batch, kwargs = args.runs[0]
  print(f"{name} {size}px batch {batch}: first train step {rows[0]['since_launch_s']:.2f} s after launch cold "
        f"({rows[0]['after_imports_s']:.2f} s after imports), {rows[1]['since_launch_s']:.2f} s warm "
        f"({rows[1]['after_imports_s']:.2f} s after imports; {rows[1]['hits']} cache hits, {rows[1]['misses']} misses)")
  return rows


def parse_kwargs(items):
  import ast
  out = {}
  for item in items or ():
    k, _, v = item.partition("=")
    try:
      out[k] = ast.literal_eval(v)
    except (ValueError, SyntaxError):
      out[k] = v
  return out


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", action="append", help="registered model name (repeatable; default: the reference set)")
  p.add_argument("--size", type=int, action="append", help="image size, one per --model (or one for all)")
  p.add_argument("--batch", type=int, action="append", help="global batch, one per --model (or one for all)")
  p.add_argument("--kw", action="append", help="model kwarg KEY=VALUE for every --model, e.g. stem=cifar width=16")
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--classes", type=int, default=1000)
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"), help="compute dtype")
  p.add_argument("--optim", default="sgd", help="optax optimiser name (sgd: momentum 0.9, as in the reference)")
  p.add_argument("--warmup", type=int, default=5, help="untimed steps after compilation")
  p.add_argument("--windows", type=int, default=10, help="timed windows; img/s is their median")
  p.add_argument("--window", type=int, default=5, help="steps per timed window (the device is waited for at its end)")
  p.add_argument("--peak-flops", type=float, help="peak FLOP/s per device for MFU (default: known-device table)")
  p.add_argument("--pipeline", help="also run the real input pipeline on this data.source (fashion_mnist, folder:DIR)")
  p.add_argument("--prefetch", type=int, default=2)
  p.add_argument("--profile", metavar="DIR", help="trace --profile-steps steps per model with jax.profiler into DIR")
  p.add_argument("--profile-steps", type=int, default=3)
  p.add_argument("--workers", type=int, default=-1, help="decode processes for folder: sources (-1: one per core)")
  p.add_argument("--jpeg-images", type=int, default=1000, help="--pipeline jpeg: JPEGs to generate")
  p.add_argument("--compile-cache", action="store_true", help="cold vs warm persistent cache, two processes")
  p.add_argument("--cache-dir", default="off", help="persistent compilation cache for the timed runs (default off, "
                                                   "so compile_s is a real compile)")
  p.add_argument("--child-first-step", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--json", help="also write the rows to this file")
  args = p.parse_args(argv)
  if args.model:
    n = len(args.model)
    pick = lambda vals, default: (vals * n if vals and len(vals) == 1 else vals or [default] * n)
    sizes, batches = pick(args.size, 224), pick(args.batch, 256)
    if len(sizes) != n or len(batches) != n:
      p.error("give one --size and one --batch for all models, or one per --model")
    args.runs = [(m, s, b, parse_kwargs(args.kw)) for m, s, b in zip(args.model, sizes, batches)]
  else:
    args.runs = REFERENCE
  if args.child_first_step:
    return first_step_child(args)
  if args.compile_cache:
    return compile_cache_bench(args, argv)

  from imgrec import compile_cache
  compile_cache.enable(args.cache_dir)
  jpeg_dir = tempfile.TemporaryDirectory(prefix="imgrec_bench_jpeg_") if args.pipeline == "jpeg" else None
  args.jpeg_dir = jpeg_dir.name if jpeg_dir else None
  rows = []
  for name, size, batch, kwargs in args.runs:
    row = bench_model(args, name, size, batch, kwargs)
    rows.append(row)
    mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a (no peak known; --peak-flops)"
    mem = f"{row['peak_memory_gb']:.2f} GB" if row["peak_memory_gb"] else "n/a"
    line = (f"{name} {tuple(row['input'])} batch {batch} {args.dtype} on {row['devices']}x {row['device_kind']}: "
            f"{row['img_per_sec']:.1f} img/s, MFU {mfu}, compile {row['compile_s']:.1f} s, peak memory {mem}, "
            f"{row['fwd_gflops_per_img']:.3f} fwd GFLOPs/img")
    if "pipeline" in row:
      line += (f"; real pipeline ({row['pipeline']}) {row['pipeline_img_per_sec']:.1f} img/s = "
               f"{100 * row['pipeline_fraction']:.1f}% of synthetic")
    print(line, flush=True)
    print(json.dumps(row), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
  return rows


if __name__ == "__main__":
  main()
