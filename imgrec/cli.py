"""The `imgrec` command. Thin: parses arguments and calls library functions.

  imgrec train [--config configs/FILE.py[:ARGS]] [--workdir W] [--config.KEY=VALUE ...]
  imgrec eval --workdir W [--split test] [--json]
  imgrec export --workdir W --out F.zip
  imgrec import-torchvision ARCH WEIGHTS.pth --workdir W   (then --config.transfer.init_from=W)
  imgrec compress --workdir W --method int8|bf16|prune --out PATH [--sparsity 0.9 --steps 200]
"""
import argparse
import json
import logging
import os
import sys

from imgrec.errors import UserError


def _train(args, overrides):
  from imgrec import config, train
  cfg = config.load(args.config)
  config.override(cfg, overrides)
  workdir = args.workdir or os.path.join(
      "runs", os.path.splitext(os.path.basename(args.config.partition(":")[0]))[0] if args.config else "default")
  train.train(cfg, workdir)
  print(f"workdir: {workdir} (metrics.jsonl, curves.png, checkpoints/)")


def _eval(args, overrides):
  from imgrec import evaluate
  result = evaluate.evaluate_workdir(args.workdir, args.split)
  if args.json:
    print(json.dumps({k: result[k] for k in ("split", "accuracy", "loss", "examples")}))
  else:
    print(f"{result['split']} accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}, "
          f"{result['examples']} examples (checkpoint step {result['step']})")


def _export(args, overrides):
  from imgrec import export
  meta = export.export_workdir(args.workdir, args.out, platforms=args.platforms.split(","))
  print(f"exported {meta['workdir']} (step {meta['step']}) to {args.out}: uint8[b, "
        f"{', '.join(map(str, meta['image_shape']))}] -> logits[b, {len(meta['class_names'])}], "
        f"platforms {','.join(meta['platforms'])}, {os.path.getsize(args.out)} bytes")


def _compress(args, overrides):
  from imgrec import compress
  r = compress.compress_workdir(args.workdir, args.method, args.out, sparsity=args.sparsity, steps=args.steps)
  extra = f", sparsity {r['sparsity']:.3f}" if "sparsity" in r else ""
  print(f"{r['method']}: accuracy {r['accuracy']:.4f} (fp32 {r['accuracy_fp32']:.4f}), "
        f"{r['bytes']} bytes (fp32 {r['bytes_fp32']}){extra} -> {args.out}")


def _import_torchvision(args, overrides):
  from imgrec import torchvision_import
  flat = torchvision_import.import_torchvision(args.arch, args.weights, args.workdir)
  print(f"converted {len(flat)} tensors of {args.arch} into {os.path.join(args.workdir, 'params.npz')}; fine-tune with "
        f"--config.model.name={args.arch} --config.model.kwargs.stem=imagenet --config.transfer.init_from={args.workdir}")


def parser():
  p = argparse.ArgumentParser(prog="imgrec", description="Image recognition in JAX.")
  sub = p.add_subparsers(dest="command", required=True)
  t = sub.add_parser("train", help="train a model; resumes from --workdir",
                     epilog="Any config key can be overridden: --config.optim.lr=0.01 --config.model.name=resnet18")
  t.add_argument("--config", help="configs/FILE.py[:ARGS] (default: small CNN on digits)")
  t.add_argument("--workdir", help="output directory (default: runs/CONFIG_NAME)")
  t.set_defaults(func=_train)
  e = sub.add_parser("eval", help="evaluate a trained workdir")
  e.add_argument("--workdir", required=True)
  e.add_argument("--split", help="split to evaluate (default: the config's eval split)")
  e.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
  e.set_defaults(func=_eval)
  x = sub.add_parser("export", help="serialise the predict function (jax.export, StableHLO) to a file")
  x.add_argument("--workdir", required=True)
  x.add_argument("--out", required=True, help="artifact path (a zip: predict.jaxexport + meta.json)")
  x.add_argument("--platforms", default="cpu,cuda,tpu", help="comma-separated platforms to lower for")
  x.set_defaults(func=_export)
  c = sub.add_parser("compress", help="int8 quantisation, bf16 weights or magnitude pruning of a workdir")
  c.add_argument("--workdir", required=True)
  c.add_argument("--method", required=True, choices=("int8", "bf16", "prune"))
  c.add_argument("--out", required=True, help="int8/bf16: variables .npz; prune: a new workdir")
  c.add_argument("--sparsity", type=float, default=0.9, help="prune: fraction of kernel weights set to zero")
  c.add_argument("--steps", type=int, default=200, help="prune: fine-tuning steps")
  c.set_defaults(func=_compress)
  i = sub.add_parser("import-torchvision", help="convert a torchvision state_dict (.pth) to imgrec params")
  i.add_argument("arch", help="resnet18 | resnet34 | resnet50")
  i.add_argument("weights", help="the .pth state_dict file")
  i.add_argument("--workdir", required=True, help="where params.npz goes")
  i.set_defaults(func=_import_torchvision)
  return p


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  # --config.KEY=VALUE overrides are not argparse options; take them out first.
  overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
  rest = [a for a in argv if not a.startswith("--config.")]
  args = parser().parse_args(rest)
  if overrides and args.command != "train":
    print(f"imgrec: error: --config.KEY=VALUE overrides apply to `imgrec train` only", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
  try:
    args.func(args, overrides)
  except UserError as e:
    print(f"imgrec: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
