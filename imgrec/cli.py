"""The `imgrec` command. Thin: parses arguments and calls library functions.

  imgrec train [--config configs/FILE.py[:ARGS]] [--workdir W] [--config.KEY=VALUE ...]
  imgrec augment-preview [--config ...] [--config.data.augment=...] [--out F.png]
  imgrec eval --workdir W [--split test] [--tta] [--json]
  imgrec explain --workdir W [--images A.png B.png | --split test --n 16] [--layer NAME]
  imgrec robustness --workdir W [--split test] [--limit N] [--corruptions a,b] [--epsilons 1,2,4,8]
  imgrec export --workdir W --out F.zip
  imgrec import-torchvision ARCH WEIGHTS.pth --workdir W   (then --config.transfer.init_from=W)
  imgrec compress --workdir W --method int8|bf16|prune|channels --out PATH [--sparsity 0.9 --steps 200]
  imgrec serve --workdir W [--workdir NAME:VERSION=W2 ...] [--host H --port P] [--grpc-port G] [--api-keys-file F]
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
  result = evaluate.evaluate_workdir(args.workdir, args.split, args.batch_size, tta=args.tta)
  if args.json:
    print(json.dumps(evaluate.headline(result)))
  else:
    print(f"{result['split']} accuracy {result['accuracy']:.4f} (top-5 {result['top5_accuracy']:.4f}), "
          f"loss {result['loss']:.4f}, ECE {result['ece']:.4f}, macro F1 {result['macro']['f1']:.4f}, "
          f"{result['examples']} examples (checkpoint step {result['step']}); report: {result['report']}/report.md")


def _robustness(args, overrides):
  from imgrec import robustness
  names = tuple(filter(None, args.corruptions.split(","))) if args.corruptions is not None else robustness.CORRUPTIONS
  try:
    eps = tuple(float(e) for e in args.epsilons.split(",") if e) if args.epsilons is not None else robustness.EPSILONS
  except ValueError:
    raise UserError(f"--epsilons takes comma-separated numbers in 1/255 units, e.g. 1,2,4,8; got {args.epsilons!r}")
  result = robustness.robustness_workdir(args.workdir, args.split, args.batch_size, args.limit, names, eps,
                                         args.pgd_steps)
  print(robustness.table_markdown(result))
  print(f"written: {result['out']}/robustness.md, robustness.json, robustness.png")
  if args.json:
    print(json.dumps({k: result[k] for k in ("split", "examples", "clean_accuracy", "mean_corruption_accuracy",
                                              "relative_drop", "adversarial")}))


def _explain(args, overrides):
  from imgrec import explain
  result = explain.explain_workdir(args.workdir, args.images, args.split, args.n, args.layer, args.ig_steps)
  print(f"{result['method']}" + (f" on layer {result['layer']}" if result["layer"] else "") +
        f": {len(result['files'])} explanation PNGs in {os.path.dirname(result['files'][0])}"
        + (f", filters: {result['filters']}" if result["filters"] else ""))


def _augment_preview(args, overrides):
  from imgrec import config
  from imgrec.data import augment
  cfg = config.load(args.config)
  config.override(cfg, overrides)
  print(f"wrote {augment.preview(cfg, args.out)}")


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
  extra += f", params {r['params_fp32']} -> {r['params']}" if "params" in r else ""
  print(f"{r['method']}: accuracy {r['accuracy']:.4f} (fp32 {r['accuracy_fp32']:.4f}), "
        f"{r['bytes']} bytes (fp32 {r['bytes_fp32']}){extra} -> {args.out}")


def _import_torchvision(args, overrides):
  from imgrec import torchvision_import
  flat, info = torchvision_import.import_torchvision(args.arch, args.weights, args.workdir)
  kwargs = "".join(f" --config.model.kwargs.{k}={v}" for k, v in info["model"]["kwargs"].items())
  print(f"converted {len(flat)} tensors of {args.arch} into {os.path.join(args.workdir, 'params.npz')}; fine-tune with "
        f"--config.model.name={info['model']['name']}{kwargs} --config.transfer.init_from={args.workdir}")


def _serve(args, overrides):
  from imgrec.serve import app
  sizes = tuple(int(s) for s in args.batch_sizes.split(",") if s.strip())
  if not sizes or min(sizes) < 1:
    raise UserError(f"--batch-sizes {args.batch_sizes!r}: give positive integers, e.g. 1,8,32,64")
  options = app.Options(batch_sizes=sizes, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
                        timeout_s=args.timeout, float_inputs=not args.no_float_inputs)
  app.serve(args.workdir, args.host, args.port, args.api_keys_file, options, args.grpc_port)


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
  e.add_argument("--batch-size", type=int, help="global batch size (default: the config's)")
  e.add_argument("--tta", action="store_true", help="test-time augmentation: average over horizontal flips")
  e.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
  e.set_defaults(func=_eval)
  a = sub.add_parser("augment-preview", help="write a PNG grid of augmented training images")
  a.add_argument("--config", help="configs/FILE.py[:ARGS]")
  a.add_argument("--out", default="augment_preview.png")
  a.set_defaults(func=_augment_preview)
  x = sub.add_parser("explain", help="saliency, SmoothGrad, integrated gradients, Grad-CAM / attention rollout")
  x.add_argument("--workdir", required=True)
  x.add_argument("--images", nargs="+", help="image files to explain (default: --n examples of --split)")
  x.add_argument("--split", default="test")
  x.add_argument("--n", type=int, default=16, help="number of split examples (a fixed random sample)")
  x.add_argument("--layer", help="Grad-CAM layer, e.g. stage4_block2 (default: the last spatial layer)")
  x.add_argument("--ig-steps", type=int, default=128, help="integration steps of integrated gradients")
  x.set_defaults(func=_explain)
  r = sub.add_parser("robustness", help="accuracy under corruptions (5 severities) and FGSM/PGD attacks")
  r.add_argument("--workdir", required=True)
  r.add_argument("--split", help="split to evaluate (default: the config's eval split)")
  r.add_argument("--batch-size", type=int, help="global batch size (default: the config's)")
  r.add_argument("--limit", type=int, default=0, help="use a fixed random subset of N examples (0: all)")
  r.add_argument("--corruptions", help="comma-separated subset (default: all; empty string: none)")
  r.add_argument("--epsilons", help="comma-separated attack budgets in 1/255 units (default 1,2,4,8; empty: none)")
  r.add_argument("--pgd-steps", type=int, default=10)
  r.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
  r.set_defaults(func=_robustness)
  x = sub.add_parser("export", help="serialise the predict function (jax.export, StableHLO) to a file")
  x.add_argument("--workdir", required=True)
  x.add_argument("--out", required=True, help="artifact path (a zip: predict.jaxexport + meta.json)")
  x.add_argument("--platforms", default="cpu,cuda,tpu", help="comma-separated platforms to lower for")
  x.set_defaults(func=_export)
  c = sub.add_parser("compress", help="int8 quantisation, bf16 weights, magnitude or channel pruning of a workdir")
  c.add_argument("--workdir", required=True)
  c.add_argument("--method", required=True, choices=("int8", "bf16", "prune", "channels"))
  c.add_argument("--out", required=True, help="int8/bf16: variables .npz; prune/channels: a new workdir")
  c.add_argument("--sparsity", type=float, default=0.9,
                 help="prune: fraction of kernel weights set to zero; channels: fraction of channels removed per conv")
  c.add_argument("--steps", type=int, default=200, help="prune/channels: fine-tuning steps")
  c.set_defaults(func=_compress)
  i = sub.add_parser("import-torchvision", help="convert a torchvision state_dict (.pth) to imgrec params")
  i.add_argument("arch", help="resnet18 | resnet34 | resnet50 | vgg16 | vgg16_bn | mobilenet_v2 | efficientnet_b0 | "
                 "vit_b_16")
  i.add_argument("weights", help="the .pth state_dict file")
  i.add_argument("--workdir", required=True, help="where params.npz goes")
  i.set_defaults(func=_import_torchvision)
  s = sub.add_parser("serve", help="serve workdirs over HTTP (OIP v2, TF-Serving REST, uploads, web page) and gRPC")
  s.add_argument("--workdir", action="append", required=True,
                 help="W, NAME=W or NAME:VERSION=W; repeat to serve several models/versions")
  s.add_argument("--host", default="127.0.0.1")
  s.add_argument("--port", type=int, default=8000)
  s.add_argument("--grpc-port", type=int, help="also serve the OIP v2 gRPC API (KServe/Triton clients) on this port")
  s.add_argument("--api-keys-file", help="one key per line; clients send Authorization: Bearer KEY or X-API-Key")
  s.add_argument("--batch-sizes", default="1,8,32,64", help="padded batch sizes compiled at start-up")
  s.add_argument("--max-delay-ms", type=float, default=1.0, help="longest wait for a batch to fill")
  s.add_argument("--max-queue", type=int, default=256, help="queued requests per model before 503")
  s.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds (504 after)")
  s.add_argument("--no-float-inputs", action="store_true", help="do not compile the FP32 (normalised) input path")
  s.set_defaults(func=_serve)
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
  if overrides and args.command not in ("train", "augment-preview"):
    print(f"imgrec: error: --config.KEY=VALUE overrides apply to `imgrec train` only", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
  try:
    from imgrec import compile_cache
    compile_cache.enable()  # before any command compiles; `train` may point it elsewhere (compile_cache key)
    args.func(args, overrides)
  except UserError as e:
    print(f"imgrec: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
