"""Import benchmark: `imgrec import` of a ViT-B/16-size timm safetensors file (random weights, 86.6M
parameters, 346 MB), timed as a whole process: wall time and peak RSS, medians of --runs runs.

  python scripts/bench_import.py [--runs 3] [--dir /tmp/bench_import]
  python scripts/bench_import.py --finetune [--steps 20 --size 64]
  python scripts/bench_import.py --two-tower [--runs 3]    # a SigLIP B/16-size SiglipModel folder, both towers

Goal (issue 23): under 10 s and a peak RSS under 2x the file size. Also prints the interpreter's own floor (a
process that only imports imgrec.checkpoint_import), so the figure can be read against it.
--finetune instead runs the whole path on a random-weight ViT-S/16: timm safetensors -> `imgrec import` ->
`imgrec train` from it on a folder of random images (3 classes) at --size px (position embedding resampled),
then `imgrec eval`. Its accuracy means nothing (random weights, random images): it shows the path runs.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vit_b16_timm(path, classes=1000, seed=0, d=768, m=3072):
  """timm's vit_base_patch16_224 key layout (d=384, m=1536: vit_small_patch16_224), random float32 values."""
  rng = np.random.default_rng(seed)
  r = lambda *shape: rng.standard_normal(shape, dtype=np.float32) * 0.02
  sd = {"cls_token": r(1, 1, d), "pos_embed": r(1, 197, d), "patch_embed.proj.weight": r(d, 3, 16, 16),
        "patch_embed.proj.bias": r(d), "norm.weight": r(d), "norm.bias": r(d), "head.weight": r(classes, d),
        "head.bias": r(classes)}
  for i in range(12):
    b = f"blocks.{i}."
    sd.update({b + "norm1.weight": r(d), b + "norm1.bias": r(d), b + "attn.qkv.weight": r(3 * d, d),
               b + "attn.qkv.bias": r(3 * d), b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d),
               b + "norm2.weight": r(d), b + "norm2.bias": r(d), b + "mlp.fc1.weight": r(m, d), b + "mlp.fc1.bias": r(m),
               b + "mlp.fc2.weight": r(d, m), b + "mlp.fc2.bias": r(d)})
  save_file(sd, path)
  return sum(v.size for v in sd.values())


def siglip_b16_folder(folder, seed=0):
  """A Hugging Face SiglipModel folder of SigLIP B/16's shapes (203.2M parameters), random float32 values: the key
  names and shapes from transformers' own SiglipModel built on the meta device (nothing allocated), the values
  written here; with a tiny trained spiece.model as its tokenizer (the import copies it)."""
  sys.path.insert(0, ROOT)
  from tests import text_helpers, torch_reference
  torch, tf = torch_reference.torch, torch_reference.transformers
  with torch.device("meta"):
    model = tf.SiglipModel(tf.SiglipConfig())
  rng = np.random.default_rng(seed)
  sd = {k: rng.standard_normal(tuple(v.shape), dtype=np.float32) * 0.02 for k, v in model.state_dict().items()}
  os.makedirs(folder, exist_ok=True)
  save_file(sd, os.path.join(folder, "model.safetensors"))
  model.config.to_json_file(os.path.join(folder, "config.json"))
  text_helpers.sentencepiece_model(folder)
  return sum(v.size for v in sd.values())


def timed(cmd, env):
  """(wall s, peak RSS MB) of one process, by /usr/bin/time -v."""
  start = time.perf_counter()
  proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
  rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
  return wall, rss_kb / 1024


def finetune(args, env):
  """timm ViT-S/16 (random) -> imgrec import -> imgrec train on a random-image folder -> imgrec eval."""
  from PIL import Image
  path = os.path.join(args.dir, "vit_s16.safetensors")
  vit_b16_timm(path, d=384, m=1536)
  rng = np.random.default_rng(0)
  photos = os.path.join(args.dir, "photos")
  shutil.rmtree(photos, ignore_errors=True)
  for i in range(60):
    os.makedirs(os.path.join(photos, f"c{i % 3}"), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(os.path.join(photos, f"c{i % 3}", f"{i}.jpg"))
  out, run = os.path.join(args.dir, "vit_s16"), os.path.join(args.dir, "ft")
  shutil.rmtree(out, ignore_errors=True)
  shutil.rmtree(run, ignore_errors=True)
  steps = [[sys.executable, "-m", "imgrec", "import", path, "--out", out],
           [sys.executable, "-m", "imgrec", "train", "--workdir", run, f"--config.data.source=folder:{photos}",
            f"--config.data.image_size={args.size}", "--config.data.test_fraction=0.25", "--config.batch_size=16",
            f"--config.steps={args.steps}", f"--config.eval_every={args.steps}", f"--config.checkpoint_every={args.steps}",
            "--config.log_every=5", "--config.model.name=vit_s16", "--config.model.kwargs.gelu_approximate=False",
            f"--config.transfer.init_from={out}", "--config.optim.lr=1e-4"],
           [sys.executable, "-m", "imgrec", "eval", "--workdir", run, "--json"]]
  for cmd in steps:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print(f"$ {' '.join(cmd[1:])}\n  exit {proc.returncode}, {time.perf_counter() - start:.1f} s")
    print("\n".join("  " + line for line in proc.stdout.strip().splitlines()[-8:]))
    if proc.returncode:
      raise SystemExit(proc.stderr[-3000:])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--dir", default="/tmp/bench_import")
  p.add_argument("--finetune", action="store_true", help="the import -> train -> eval path on a random ViT-S/16")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--two-tower", action="store_true", help="a SigLIP B/16-size Hugging Face folder, both towers")
  args = p.parse_args()
  os.makedirs(args.dir, exist_ok=True)
  if args.finetune:
    return finetune(args, dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
  if args.two_tower:
    path = os.path.join(args.dir, "siglip_b16")
    n = siglip_b16_folder(path)
    size_mb = os.path.getsize(os.path.join(path, "model.safetensors")) / 2**20
  else:
    path = os.path.join(args.dir, "vit_b16.safetensors")
    n = vit_b16_timm(path)
    size_mb = os.path.getsize(path) / 2**20
  print(f"file: {path}, {n / 1e6:.1f}M parameters, {size_mb:.0f} MiB")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  floor = [timed([sys.executable, "-c", "import imgrec.checkpoint_import"], env) for _ in range(args.runs)]
  runs = []
  for i in range(args.runs):
    out = os.path.join(args.dir, f"out{i}")
    shutil.rmtree(out, ignore_errors=True)
    runs.append(timed([sys.executable, "-m", "imgrec", "import", path, "--out", out], env))
    shutil.rmtree(out, ignore_errors=True)
  wall, rss = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
  print(f"import only (interpreter + imports): {statistics.median(f[0] for f in floor):.2f} s, "
        f"{statistics.median(f[1] for f in floor):.0f} MiB")
  print(f"imgrec import: wall {', '.join(f'{r[0]:.2f}' for r in runs)} s (median {wall:.2f} s); peak RSS "
        f"{', '.join(f'{r[1]:.0f}' for r in runs)} MiB (median {rss:.0f} MiB = {rss / size_mb:.2f}x the file)")
  print(f"goal under 10 s: {'met' if wall < 10 else 'NOT met'}; goal under 2x the file size: "
        f"{'met' if rss < 2 * size_mb else 'NOT met'}")


if __name__ == "__main__":
  main()
