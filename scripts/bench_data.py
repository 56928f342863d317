"""Input pipeline throughput on a generated ImageNet-like JPEG folder, side by side with a PyTorch DataLoader.

  python scripts/bench_data.py                                  # throughput + single-core limits
  python scripts/bench_data.py --index-files 20000,200000       # + time to first batch / peak RSS by index size

The folder (not committed; --dir, default a temporary one) holds --images deterministic JPEGs of
400-640 x 300-480 px at quality 90, a low-frequency colour field plus texture and grain so that they
compress like photos (~100 KB each), in --classes class folders. Measured in one run, alternating:

  imgrec    imgrec.data.pipeline.train_batches over folder:DIR with decode|random_resized_crop(224)|flip,
            delivered as jax arrays on the device (block_until_ready), at each --workers count
  torch     a torch.utils.data.DataLoader, same worker count and batch: per sample PIL open + convert RGB,
            torchvision's RandomResizedCrop(224) sampling then PIL crop + resize (bilinear), random
            horizontal flip, uint8 HWC tensor, default collate (torchvision's PIL code path, written out
            here because torchvision is not installed)
  1 core    per-image ceilings in this process: PIL decode; PIL decode + crop + resize + flip (the peer's
            work); imgrec's decode (libjpeg-turbo through simplejpeg); imgrec's whole per-image op

Each measurement runs in a fresh process; img/s is measured from the first batch to the last (worker
start-up excluded; time to first batch is reported separately); each figure is the median over
--rounds rounds. --index-files N,... builds
folders of N hard links to the same JPEGs and runs, in a fresh process each (alternating sizes,
--rounds times), index + first batch: time since launch, and peak RSS of the main process and of the
workers.
"""
import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

PP_TRAIN = "decode|random_resized_crop(224)|flip"


# ----------------------------------------------------------------------------- data


def photo_like(rng, w, h):
  """A deterministic image that JPEG-compresses like a photo: smooth colour regions, texture, grain."""
  base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
  mid = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
  x = 0.6 * np.asarray(base, np.float32) + 0.4 * np.asarray(mid, np.float32) + rng.normal(0, 14, (h, w, 3))
  return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def generate(root, images, classes, seed=0):
  """root/class_XX/img_XXXXX.JPEG, the same bytes for the same arguments; reused when already there."""
  marker = os.path.join(root, f".generated_{images}_{classes}_{seed}")
  if os.path.exists(marker):
    return root
  for i in range(images):
    rng = np.random.default_rng([seed, i])
    d = os.path.join(root, f"class_{i % classes:02d}")
    os.makedirs(d, exist_ok=True)
    w, h = int(rng.integers(400, 641)), int(rng.integers(300, 481))
    photo_like(rng, w, h).save(os.path.join(d, f"img_{i:05d}.JPEG"), quality=90)
  open(marker, "w").close()
  return root


def linked_folder(src, n, out):
  """out/class_XX/... with n hard links cycling over the JPEGs of `src` (same classes)."""
  marker = os.path.join(out, f".links_{n}")
  if os.path.exists(marker):
    return out
  files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(src) for f in fs if f.endswith(".JPEG"))
  for i in range(n):
    f = files[i % len(files)]
    d = os.path.join(out, os.path.basename(os.path.dirname(f)))
    os.makedirs(d, exist_ok=True)
    dst = os.path.join(d, f"link_{i:07d}.JPEG")
    if not os.path.exists(dst):
      os.link(f, dst)
  open(marker, "w").close()
  return out


# ----------------------------------------------------------------------------- imgrec


def imgrec_source(root, workers):
  from imgrec import config
  from imgrec.data import sources
  cfg = config.defaults().data
  cfg.source, cfg.pp_train, cfg.pp_eval, cfg.workers = f"folder:{root}", PP_TRAIN, "decode|resize(224)", workers
  cfg.test_fraction = 0.01
  return sources.load(cfg).split("train")


def time_batches(batches, count, batch_size, block):
  """(seconds to the first batch, img/s from the first batch to the last) over `count` batches."""
  t0 = time.perf_counter()
  t_first = None
  for k, batch in enumerate(batches):
    block(batch)
    if k == 0:
      t_first = time.perf_counter()
    if k + 1 == count:
      break
  t_end = time.perf_counter()
  return t_first - t0, (count - 1) * batch_size / (t_end - t_first)


def bench_imgrec(root, workers, batch_size, count):
  import jax
  from imgrec import parallel
  from imgrec.data import pipeline
  split = imgrec_source(root, workers)
  sharding = parallel.batch_sharding(parallel.make_mesh())
  batches = pipeline.train_batches(split, batch_size, 0, 0, count, sharding, 2)
  try:
    return time_batches((b for _, b in batches), count, batch_size, lambda b: jax.block_until_ready(b["image"]))
  finally:
    batches.close()


# ----------------------------------------------------------------------------- the PyTorch peer


def rrc_params(width, height, gen, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision.transforms.RandomResizedCrop.get_params, with torch's RNG as torchvision draws it."""
  import math
  import torch
  area = height * width
  log_ratio = torch.log(torch.tensor(ratio))
  for _ in range(10):
    target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
    aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=gen).item())
    w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      i = torch.randint(0, height - h + 1, size=(1,), generator=gen).item()
      j = torch.randint(0, width - w + 1, size=(1,), generator=gen).item()
      return i, j, h, w
  w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


class PeerDataset:
  """A map-style dataset: PIL decode, random-resized-crop 224 (crop, then resize), flip, uint8 tensor."""

  def __init__(self, files):
    self.files = files

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    import torch
    gen = torch.Generator().manual_seed(i)
    with Image.open(self.files[i]) as im:
      im = im.convert("RGB")
    top, left, h, w = rrc_params(im.size[0], im.size[1], gen)
    im = im.crop((left, top, left + w, top + h)).resize((224, 224), Image.BILINEAR)
    if torch.rand(1, generator=gen).item() < 0.5:
      im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(im).copy()), i % 1000


def bench_torch(files, workers, batch_size, count):
  import torch
  loader = torch.utils.data.DataLoader(PeerDataset(files), batch_size=batch_size, shuffle=True,
                                       num_workers=workers, drop_last=True,
                                       generator=torch.Generator().manual_seed(0))
  it = iter(loader)
  try:
    return time_batches(it, count, batch_size, lambda b: None)
  finally:
    del it


# ----------------------------------------------------------------------------- one core


def single_core(files, n):
  """img/s on one core for each per-image stage, over the first n files read into memory first."""
  from imgrec.data import preprocess
  datas = [open(f, "rb").read() for f in files[:n]]
  ops = preprocess.parse(PP_TRAIN)

  def pil_decode(d, _):
    with Image.open(io.BytesIO(d)) as im:
      return im.convert("RGB")

  def pil_rrc(d, rng):
    im = pil_decode(d, rng)
    top, left, h, w = preprocess.random_resized_crop_window(im.size[1], im.size[0], (0.08, 1.0), (3 / 4, 4 / 3), rng)
    im = im.crop((left, top, left + w, top + h)).resize((224, 224), Image.BILINEAR)
    return im.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else im

  stages = {"PIL decode": pil_decode, "PIL decode + crop + resize + flip (peer)": pil_rrc,
            "imgrec decode (simplejpeg)": lambda d, _: preprocess.decode(d, 3),
            "imgrec per image (decode|random_resized_crop(224)|flip)": lambda d, rng: preprocess.process(ops, d, 3, rng)}
  out = {}
  for name, fn in stages.items():
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for d in datas:
      fn(d, rng)
    out[name] = len(datas) / (time.perf_counter() - t)
  return out


# ----------------------------------------------------------------------------- index size


def child_first_batch(args):
  """Fresh process: index the folder, make the first batch; print times since launch and peak RSS."""
  t_launch = float(os.environ["BENCH_T0"])
  import jax
  import psutil
  from imgrec import parallel
  from imgrec.data import pipeline
  t_imports = time.time()
  split = imgrec_source(args.child_first_batch, args.child_workers)
  t_index = time.time()
  sharding = parallel.batch_sharding(parallel.make_mesh())
  batches = pipeline.train_batches(split, args.batch, 0, 0, 2, sharding, 2)
  _, batch = next(batches)
  jax.block_until_ready(batch["image"])
  t_first = time.time()
  workers_rss = sum(c.memory_info().rss for c in psutil.Process().children(recursive=True))
  batches.close()
  print(json.dumps({"files": len(split), "imports_s": t_imports - t_launch, "index_s": t_index - t_imports,
                    "first_batch_s": t_first - t_launch, "after_index_s": t_first - t_index,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "workers_rss_mb": workers_rss / 2**20}))


def index_bench(args, root):
  sizes = [int(s) for s in args.index_files.split(",") if s]
  folders = {n: linked_folder(root, n, os.path.join(args.dir, f"links_{n}")) for n in sizes}
  rows = {n: [] for n in sizes}
  for _ in range(args.rounds):
    for n in sizes:
      env = dict(os.environ, BENCH_T0=repr(time.time()))
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child-first-batch", folders[n],
                             "--child-workers", str(max(int(w) for w in args.workers.split(","))),
                             "--batch", str(args.batch)], env=env, capture_output=True, text=True)
      if proc.returncode:
        raise SystemExit(f"child failed:\n{proc.stderr[-4000:]}")
      rows[n].append(json.loads(proc.stdout.strip().splitlines()[-1]))
  summary = {n: {k: statistics.median(r[k] for r in rows[n]) for k in rows[n][0]} for n in sizes}
  for n, s in summary.items():
    print(json.dumps({"index_files": n, **s}), flush=True)
  return summary


# ----------------------------------------------------------------------------- main


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dir", help="where the generated folder goes (default: a temporary directory, removed after)")
  p.add_argument("--images", type=int, default=2000)
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--batches", type=int, default=24, help="batches per measurement (img/s over all but the first)")
  p.add_argument("--workers", default="1,2")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--single", type=int, default=300, help="images for the one-core ceilings")
  p.add_argument("--index-files", default="", help="e.g. 20000,200000: time to first batch and RSS per index size")
  p.add_argument("--only-index", action="store_true", help="only the --index-files measurement")
  p.add_argument("--json", help="also write the results here")
  p.add_argument("--child-first-batch", help=argparse.SUPPRESS)
  p.add_argument("--child-workers", type=int, default=2, help=argparse.SUPPRESS)
  p.add_argument("--child-run", choices=("imgrec", "torch"), help=argparse.SUPPRESS)
  p.add_argument("--child-dir", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child_first_batch:
    return child_first_batch(args)
  if args.child_run:
    files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(args.child_dir) for f in fs if f.endswith(".JPEG"))
    run = bench_imgrec(args.child_dir, args.child_workers, args.batch, args.batches) if args.child_run == "imgrec" \
        else bench_torch(files, args.child_workers, args.batch, args.batches)
    return print(json.dumps(run))
  tmp = None
  if not args.dir:
    tmp = tempfile.TemporaryDirectory(prefix="imgrec_bench_data_")
    args.dir = tmp.name
  root = generate(os.path.join(args.dir, "photos"), args.images, args.classes)
  files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs if f.endswith(".JPEG"))
  print(f"{len(files)} JPEGs, {sum(os.path.getsize(f) for f in files) / len(files) / 1024:.0f} KB on average, "
        f"in {root}", flush=True)
  if args.only_index:
    return index_bench(args, root)
  workers = [int(w) for w in args.workers.split(",")]
  runs = {(who, w): [] for w in workers for who in ("imgrec", "torch")}
  cores = []
  for r in range(args.rounds):
    for w in workers:
      for who in ("imgrec", "torch"):  # each in a fresh process: no JAX threads under torch's fork
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child-run", who, "--child-workers", str(w),
                               "--child-dir", root, "--batch", str(args.batch), "--batches", str(args.batches)],
                              capture_output=True, text=True)
        if proc.returncode:
          raise SystemExit(f"{who} child failed:\n{proc.stderr[-4000:]}")
        runs[(who, w)].append(tuple(json.loads(proc.stdout.strip().splitlines()[-1])))
    cores.append(single_core(files, args.single))
    print(f"round {r + 1}: " + ", ".join(f"{who}@{w} {v[-1][1]:.0f} img/s" for (who, w), v in runs.items()), flush=True)
  result = {"images": len(files), "batch": args.batch, "batches": args.batches, "rounds": args.rounds,
            "throughput": {f"{who}@{w}": {"img_per_sec": statistics.median(x[1] for x in v),
                                          "first_batch_s": statistics.median(x[0] for x in v),
                                          "rounds_img_per_sec": [round(x[1], 1) for x in v]}
                           for (who, w), v in runs.items()},
            "one_core_img_per_sec": {k: statistics.median(c[k] for c in cores) for k in cores[0]}}
  print("\n| pipeline | workers | img/s (median) | rounds | first batch (s) |\n|---|---|---|---|---|")
  for (who, w), _ in runs.items():
    t = result["throughput"][f"{who}@{w}"]
    print(f"| {who} | {w} | {t['img_per_sec']:.0f} | {', '.join(f'{x:.0f}' for x in t['rounds_img_per_sec'])} | "
          f"{t['first_batch_s']:.2f} |")
  for w in workers:
    ratio = result["throughput"][f"imgrec@{w}"]["img_per_sec"] / result["throughput"][f"torch@{w}"]["img_per_sec"]
    result[f"ratio@{w}"] = ratio
    print(f"imgrec / torch at {w} worker(s): {ratio:.2f}x")
  print("\n| one core | img/s |\n|---|---|")
  for k, v in result["one_core_img_per_sec"].items():
    print(f"| {k} | {v:.0f} |")
  if args.index_files:
    result["index"] = index_bench(args, root)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  if tmp is not None:
    tmp.cleanup()
  return result


if __name__ == "__main__":
  main()
