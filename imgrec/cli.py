"""The `imgrec` command. Thin: parses arguments and calls library functions.

  imgrec train [--config configs/FILE.py[:ARGS]] [--workdir W] [--config.KEY=VALUE ...]
  imgrec eval --workdir W [--split test] [--json]
  imgrec models [NAME ...] [--no-flops] [--json]
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


def _models(args, overrides):
  import tqdm
  from imgrec import models
  from imgrec.models import profile
  for name in args.names:
    models.family(name)  # unknown names fail before any work
  names = args.names or models.names()
  rows = []
  for name in tqdm.tqdm(names, desc="models", unit="model", disable=args.json or len(names) == 1):
    rows.append(profile.describe(name, args.num_classes, flops=not args.no_flops))
  if args.json:
    print(json.dumps([{k: r[k] for k in ("name", "family", "input_shape", "params", "gflops")} for r in rows]))
  else:
    print(profile.table(rows))
    print(f"params at {args.num_classes} classes; GFLOPs: XLA cost analysis of the compiled forward pass, "
          "batch 1, a multiply-add = 2 FLOPs")


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
  m = sub.add_parser("models", help="list registered models with parameter count and forward GFLOPs")
  m.add_argument("names", nargs="*", help="models to describe (default: all)")
  m.add_argument("--num-classes", type=int, default=1000)
  m.add_argument("--no-flops", action="store_true", help="skip compiling for FLOPs (parameter counts only)")
  m.add_argument("--json", action="store_true", help="print the rows as JSON")
  m.set_defaults(func=_models)
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
