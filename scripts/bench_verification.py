"""Verification benchmarks.

  python scripts/bench_verification.py gallery [--rows 100000 --dim 128 --queries 500 --k 5]
      1:N search latency (p50, p99, one query at a time) over a gallery of random embeddings, enroll throughput
      (rows/s, in batches of --batch, no saving) and the atomic save of the whole gallery
Prints a markdown table and writes OUT/gallery.json.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from imgrec.tasks.verification import gallery  # noqa: E402


def bench_gallery(a):
  rng = np.random.default_rng(0)
  rows = rng.normal(size=(a.rows, a.dim)).astype(np.float32)
  ids = [f"person{i:06d}" for i in range(a.rows // a.per_identity)]
  path = os.path.join(tempfile.mkdtemp(), "gallery.npz")
  g = gallery.Gallery.open(path, a.dim)
  t = time.perf_counter()
  for start in range(0, a.rows, a.batch):
    chunk = np.arange(start, min(start + a.batch, a.rows))
    for i in np.unique(chunk // a.per_identity):
      g.enroll(ids[i], rows[chunk[chunk // a.per_identity == i]], save=False)
  enroll_s = time.perf_counter() - t
  t = time.perf_counter()
  g.save()
  save_s = time.perf_counter() - t
  queries = rng.normal(size=(a.queries, a.dim)).astype(np.float32)
  g.search(queries[:5], a.k)  # warm up
  lat = []
  for q in queries:
    t = time.perf_counter()
    g.search(q, a.k)
    lat.append(time.perf_counter() - t)
  t = time.perf_counter()
  g.search(queries, a.k)
  batched = (time.perf_counter() - t) / a.queries
  out = {"rows": a.rows, "dim": a.dim, "identities": len(ids), "k": a.k,
         "search_p50_ms": 1e3 * float(np.percentile(lat, 50)), "search_p99_ms": 1e3 * float(np.percentile(lat, 99)),
         f"search_batched_{a.queries}_ms_per_query": 1e3 * batched,
         "enroll_rows_per_s": a.rows / enroll_s, "save_s": save_s,
         "file_mb": os.path.getsize(path) / 2**20}
  print("| rows x dim | search p50 | search p99 | batched / query | enroll | save (file) |")
  print("|---|---|---|---|---|---|")
  print(f"| {a.rows} x {a.dim} | {out['search_p50_ms']:.2f} ms | {out['search_p99_ms']:.2f} ms | "
        f"{1e3 * batched:.3f} ms | {out['enroll_rows_per_s']:.0f} rows/s | {save_s:.2f} s ({out['file_mb']:.0f} MB) |")
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="what", required=True)
  g = sub.add_parser("gallery")
  g.add_argument("--rows", type=int, default=100_000)
  g.add_argument("--dim", type=int, default=128)
  g.add_argument("--per-identity", type=int, default=2)
  g.add_argument("--batch", type=int, default=64)
  g.add_argument("--queries", type=int, default=500)
  g.add_argument("--k", type=int, default=5)
  p.add_argument("--out", default="bench_verification")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  if a.what == "gallery":
    result = bench_gallery(a)
  with open(os.path.join(a.out, f"{a.what}.json"), "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
