"""The `imgrec` command. Thin: parses arguments and calls library functions.

  imgrec train [--config configs/FILE.py[:ARGS]] [--workdir W] [--config.KEY=VALUE ...]
  imgrec eval --workdir W [--split test] [--json]
  imgrec serve --workdir W [--workdir NAME:VERSION=W2 ...] [--host H --port P] [--api-keys-file F]
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


def _serve(args, overrides):
  from imgrec.serve import app
  sizes = tuple(int(s) for s in args.batch_sizes.split(",") if s.strip())
  if not sizes or min(sizes) < 1:
    raise UserError(f"--batch-sizes {args.batch_sizes!r}: give positive integers, e.g. 1,8,32,64")
  options = app.Options(batch_sizes=sizes, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
                        timeout_s=args.timeout, float_inputs=not args.no_float_inputs)
  app.serve(args.workdir, args.host, args.port, args.api_keys_file, options)


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
  s = sub.add_parser("serve", help="serve workdirs over HTTP (OIP v2, TF-Serving REST, uploads, web page)")
  s.add_argument("--workdir", action="append", required=True,
                 help="W, NAME=W or NAME:VERSION=W; repeat to serve several models/versions")
  s.add_argument("--host", default="127.0.0.1")
  s.add_argument("--port", type=int, default=8000)
  s.add_argument("--api-keys-file", help="one key per line; clients send Authorization: Bearer KEY or X-API-Key")
  s.add_argument("--batch-sizes", default="1,8,32,64", help="padded batch sizes compiled at start-up")
  s.add_argument("--max-delay-ms", type=float, default=1.0, help="longest wait for a batch to fill")
  s.add_argument("--max-queue", type=int, default=256, help="queued requests per model before 503")
  s.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds (504 after)")
  s.add_argument("--no-float-inputs", action="store_true", help="do not compile the FP32 (normalised) input path")
  s.set_defaults(func=_serve)
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
