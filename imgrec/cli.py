"""The `imgrec` command. Thin: parses arguments and calls library functions.

  imgrec train [--config configs/FILE.py[:ARGS]] [--workdir W] [--restart] [--config.KEY=VALUE ...]
  imgrec augment-preview [--config ...] [--config.data.augment=...] [--out F.png]
  imgrec eval --workdir W [--split test] [--tta] [--json] [--config.data.dir=NEW | --config.data.source=NEW]
  imgrec explain --workdir W [--images A.png B.png | --split test --n 16] [--layer NAME] [--config.data.dir=...]
  imgrec robustness --workdir W [--split test] [--limit N] [--corruptions a,b] [--epsilons 1,2,4,8] [--config.data...]
  imgrec export --workdir W --out F.zip
  imgrec import SOURCE [--model NAME] --out W   (.npz[:img], .safetensors, a timm/HF folder, .pth; then
                                                --config.transfer.init_from=W)
  imgrec import-torchvision ARCH WEIGHTS.pth --workdir W   (the same as `imgrec import WEIGHTS --model ARCH --out W`)
  imgrec compress --workdir W --method int8|bf16|prune|channels --out PATH [--sparsity 0.9 --steps 200]
  imgrec serve --workdir W [--workdir NAME:VERSION=W2 ...] [--host H --port P] [--grpc-port G] [--api-keys-file F]
               [--model-repository DIR --model-control-mode none|explicit|poll --load-model NAME
                --repository-poll-secs S --memory-budget 8G|0.5 --admin-keys-file F]
  imgrec sweep --config C --study DIR --trials N --space 'optim.lr=loguniform(1e-4,1e-1)' [--space ...]
               [--storage URL] [--metric val.METRIC] [--direction maximize] [--pruner median] [--config.KEY=VALUE ...]
  imgrec models [NAME ...] [--flops [NAME ...]] [--json]
  imgrec make-detection-data DIR [--train N] [--test N] [--size S] [--glyphs digits|fashion_mnist]
  imgrec make-segmentation-data DIR [--train N] [--test N] [--size S]
                                  (the digit_boxes set as COCO JSON + PNGs + preview.png)

Exit codes: 0 done; 2 a user error (one line on stderr, no traceback); 75 (errors.EXIT_PREEMPTED) `train`
stopped by SIGTERM/SIGINT after writing a checkpoint at the step it reached: rerun the same command to resume;
128 + N killed by signal N (a second SIGTERM/SIGINT while that checkpoint is written exits so, at once).
Outside train and augment-preview, --config.data.dir and --config.data.source point a trained run at data that
moved or at another source of its task and classes, read with the run's own eval preprocessing, and
--config.data.on_bad_image=skip skips unreadable images there (serve reads no data and only checks them); any
other --config key is refused.
"""
import argparse
import json
import logging
import os
import sys

from imgrec.errors import EXIT_PREEMPTED, Preempted, UserError


# Platforms `jax.export` lowers for (what a serving machine's jax.default_backend() may be).
EXPORT_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def csv_arg(text, flag, convert=str, allowed=None, example="1,8,32"):
  """A comma-separated option's values, each converted by `convert` (and, with `allowed`, one of those); a bad
  item is a UserError naming the option and an example. Empty items are dropped."""
  values = []
  for item in (t.strip() for t in text.split(",")):
    if not item:
      continue
    try:
      value = convert(item)
    except ValueError:
      value = None
    if value is None or (allowed is not None and value not in allowed) or (convert is int and value < 1):
      kind = f"one of {', '.join(allowed)}" if allowed else f"positive {'integers' if convert is int else 'numbers'}"
      raise UserError(f"{flag} {text!r}: {item!r} is not valid; give {kind}, comma-separated, e.g. {example}")
    values.append(value)
  return tuple(values)


def _train(args, overrides):
  from imgrec import config, train
  cfg = config.load(args.config)
  config.override(cfg, overrides)
  workdir = args.workdir or os.path.join(
      "runs", os.path.splitext(os.path.basename(args.config.partition(":")[0]))[0] if args.config else "default")
  train.train(cfg, workdir, restart=args.restart)
  print(f"workdir: {workdir} (metrics.jsonl, curves.png, checkpoints/, tensorboard/)")


def _eval(args, overrides):
  from imgrec import evaluate
  result = evaluate.evaluate_workdir(args.workdir, args.split, args.batch_size, tta=args.tta, overrides=overrides)
  if args.json:
    print(json.dumps(evaluate.headline(result)))
  else:
    print(f"{result['line']}; report: {result['report']}/report.md")


def _robustness(args, overrides):
  from imgrec import robustness
  names = tuple(filter(None, args.corruptions.split(","))) if args.corruptions is not None else robustness.CORRUPTIONS
  eps = (csv_arg(args.epsilons, "--epsilons (in 1/255 units)", float, example="1,2,4,8")
         if args.epsilons is not None else robustness.EPSILONS)
  result = robustness.robustness_workdir(args.workdir, args.split, args.batch_size, args.limit, names, eps,
                                         args.pgd_steps, overrides=overrides)
  print(robustness.table_markdown(result))
  print(f"written: {result['out']}/robustness.md, robustness.json, robustness.png")
  if args.json:
    print(json.dumps(robustness.headline(result)))


def _explain(args, overrides):
  from imgrec import explain
  result = explain.explain_workdir(args.workdir, args.images, args.split, args.n, args.layer, args.ig_steps,
                                  overrides=overrides)
  print(f"{result['method']}" + (f" on layer {result['layer']}" if result["layer"] else "") +
        f": {len(result['files'])} explanation PNGs in {os.path.dirname(result['files'][0])}"
        + (f", filters: {result['filters']}" if result["filters"] else ""))


def _augment_preview(args, overrides):
  from imgrec import config, tasks
  cfg = config.load(args.config)
  config.override(cfg, overrides)
  task = tasks.get(cfg.task)
  preview = task.augment_preview(cfg, task.open_data(cfg))  # through the task: what its augmentations do
  if preview is None:
    raise UserError(f"`imgrec augment-preview` has nothing to draw for the {task.NAME} task: its geometry happens "
                    "at decode time (data.pp_train); its report draws test images instead")
  plot, *arguments = preview
  print(f"wrote {plot(*arguments, args.out)}")


def _export(args, overrides):
  from imgrec import export
  platforms = csv_arg(args.platforms, "--platforms", allowed=EXPORT_PLATFORMS, example="cpu,cuda")
  if not platforms:
    raise UserError(f"--platforms is empty; give one or more of {', '.join(EXPORT_PLATFORMS)}, e.g. cpu,cuda")
  meta = export.export_workdir(args.workdir, args.out, platforms=platforms)
  returns = ", ".join(f"{o['name']}[{', '.join(map(str, o['shape']))}]" for o in meta["outputs"])
  print(f"exported {meta['workdir']} (step {meta['step']}) to {args.out}: uint8[b, "
        f"{', '.join(map(str, meta['image_shape']))}] -> {returns}, "
        f"platforms {','.join(meta['platforms'])}, {os.path.getsize(args.out)} bytes")


def _compress(args, overrides):
  from imgrec import compress, train
  r = compress.compress_workdir(args.workdir, args.method, args.out, sparsity=args.sparsity, steps=args.steps,
                                finetune=train.train)
  print(f"{compress.line(r)} -> {args.out}")


def _import(args, overrides):
  from imgrec import checkpoint_import
  from imgrec.checkpoint_import import mapping
  source, model, out = ((args.weights, args.arch, args.workdir) if args.command == "import-torchvision" else
                        (args.source, args.model, args.out))
  info, rows = checkpoint_import.import_checkpoint(source, out, model)
  kwargs = "".join(f" --config.model.kwargs.{k}={_cli_value(v)}" for k, v in info["model"]["kwargs"].items())
  pre = info["preprocessing"]
  print(f"{info['layout']} checkpoint -> imgrec {info['model']['name']}: {info['counts'].get('loaded', 0)} tensors "
        f"loaded\n{mapping.table(rows)}\nwritten: {os.path.join(out, 'params.npz')}, import.json, import_report.json"
        + (f"\npreprocessing it expects ({pre['from']}): mean {pre['mean']} std {pre['std']}"
           + (f", {pre['pp_eval']}" if pre.get("pp_eval") else "") if pre else
           "\npreprocessing: the checkpoint does not say; set --config.data.mean/std (or data.norm=imagenet)"))
  if "text" in info:  # a two-tower model: its text conventions travel with it, or zero-shot cannot run
    print(f"text tower: {info['text']['file']} + text.json copied (max_len {info['text']['max_len']})" if info["text"]
          else "text tower: no tokenizer file beside the checkpoint (tokenizer.json, spiece.model or vocab.json + "
          "merges.txt); zero-shot needs one: put it there and import again")
    return
  print(f"fine-tune with --config.model.name={info['model']['name']}{kwargs} --config.transfer.init_from={out}")


def _cli_value(v):
  return f"'{tuple(v)}'" if isinstance(v, (list, tuple)) else v


def _serve(args, overrides):
  from imgrec import config, workdir as wd
  from imgrec.serve import app, repository
  wd.apply_data_overrides(config.defaults(), overrides)  # the server reads no data: only refuse other keys
  sizes = csv_arg(args.batch_sizes, "--batch-sizes", int, example="1,8,32,64")
  if not sizes:
    raise UserError(f"--batch-sizes {args.batch_sizes!r}: give positive integers, e.g. 1,8,32,64")
  if args.repository_poll_secs <= 0:
    raise UserError(f"--repository-poll-secs {args.repository_poll_secs}: give a positive number of seconds")
  options = app.Options(batch_sizes=sizes, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
                        timeout_s=args.timeout, float_inputs=not args.no_float_inputs,
                        model_repository=args.model_repository, control_mode=args.model_control_mode,
                        load_models=tuple(args.load_model), poll_secs=args.repository_poll_secs,
                        memory_budget=repository.parse_budget(args.memory_budget, repository.memory_total()))
  app.serve(args.workdir, args.host, args.port, args.api_keys_file, options, args.grpc_port, args.admin_keys_file)


def _sweep(args, overrides):
  from imgrec import sweep
  path = sweep.sweep(args.config, overrides, args.space, args.study, args.trials, storage=args.storage,
                     study_name=args.study_name, metric=args.metric, direction=args.direction, pruner=args.pruner,
                     sampler=args.sampler, heartbeat=args.heartbeat)
  print(f"results: {path}")


def _models(args, overrides):
  import tqdm
  from imgrec import models
  from imgrec.models import profile
  flops = args.flops if args.flops is not None else []
  for name in args.names + flops:
    models.family(name)  # unknown names fail before any work
  names = args.names or models.names()
  names += [n for n in flops if n not in names]
  flops = flops or (names if args.flops is not None else [])  # a bare --flops: every listed model
  with tqdm.tqdm(total=len(names), desc="models", unit="model", disable=args.json or len(names) == 1) as bar:
    rows = profile.describe_all(names, args.head_size, flops, bar.update)
  if args.json:
    print(json.dumps([{k: r[k] for k in ("name", "family", "input_shape", "params", "gflops")} for r in rows]))
  else:
    print(profile.table(rows))
    print(f"params at {args.head_size} classes" + (
        "; GFLOPs: XLA cost analysis of the compiled forward pass, batch 1, a multiply-add = 2 FLOPs "
        f"(cached in {profile.cache_path()})" if flops else "; GFLOPs with --flops [NAME ...]"))


def _make_segmentation_data(args, overrides):
  from imgrec.tasks.segmentation import synthetic
  if args.train < 1 or args.test < 1 or args.size < 32:
    raise UserError(f"--train and --test need at least 1 image and --size at least 32 px (glyphs are 12-48 px), "
                    f"got {args.train}, {args.test}, {args.size}")
  if os.path.isdir(os.path.join(args.dir, "images")) and os.listdir(os.path.join(args.dir, "images")):
    raise UserError(f"{args.dir}/images already holds files; write to a new directory (nothing is overwritten)")
  counts = synthetic.write_folder(args.dir, (args.train, args.test), args.size)
  print(f"wrote {args.dir}: train {args.train} images ({counts['train']} digit pixels), test {args.test} images "
        f"({counts['test']} digit pixels) (images/, masks/, train.txt, test.txt, classes.txt, preview.png); "
        f"read it with --config.data.source=seg:{args.dir}")


def _make_detection_data(args, overrides):
  from imgrec.tasks.detection import synthetic
  if args.train < 1 or args.test < 1 or args.size < 32:
    raise UserError(f"--train and --test need at least 1 image and --size at least 32 px (glyphs are 12-48 px), "
                    f"got {args.train}, {args.test}, {args.size}")
  counts = synthetic.write_coco(args.dir, (args.train, args.test), args.size, kind=args.glyphs)
  print(f"wrote {args.dir}: train {args.train} images {counts['train']} boxes, test {args.test} images "
        f"{counts['test']} boxes (annotations/instances_*.json, train/, test/, preview.png); "
        f"read it with --config.data.source=coco:{args.dir}")


def parser():
  p = argparse.ArgumentParser(prog="imgrec", description="Image recognition in JAX.")
  sub = p.add_subparsers(dest="command", required=True)
  t = sub.add_parser("train", help="train a model; resumes from --workdir",
                     epilog="Any config key can be overridden: --config.optim.lr=0.01 --config.model.name=resnet18")
  t.add_argument("--config", help="configs/FILE.py[:ARGS] (default: small CNN on digits)")
  t.add_argument("--workdir", help="output directory (default: runs/CONFIG_NAME)")
  t.add_argument("--restart", action="store_true",
                 help="start over in a workdir holding another run: it is moved to W/previous-<timestamp>/")
  t.set_defaults(func=_train)
  e = sub.add_parser("eval", help="evaluate a trained workdir")
  e.add_argument("--workdir", required=True)
  e.add_argument("--split", help="split to evaluate (default: the config's eval split)")
  e.add_argument("--batch-size", type=int, help="global batch size (default: the config's)")
  e.add_argument("--tta", action="store_true", help="classification: test-time augmentation, the softmax averaged over horizontal flips")
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
  i = sub.add_parser("import", help="convert a pretrained checkpoint (big_vision .npz, timm / Hugging Face "
                     "safetensors, torchvision .pth) to imgrec params on a zoo model")
  i.add_argument("source", help="FILE.npz (FILE.npz:img: a two-tower file's image tower), FILE.safetensors, a "
                 "timm / Hugging Face folder (config.json + model.safetensors), or FILE.pth")
  i.add_argument("--model", help="the zoo model (default: read from the checkpoint's config, keys and shapes)")
  i.add_argument("--out", required=True, help="a new folder: params.npz, import.json, import_report.json")
  i.set_defaults(func=_import)
  i = sub.add_parser("import-torchvision", help="imgrec import WEIGHTS --model ARCH --out W, as before")
  i.add_argument("arch", help="resnet18 | resnet34 | resnet50 | vgg16 | vgg16_bn | mobilenet_v2 | efficientnet_b0 | "
                 "vit_b_16")
  i.add_argument("weights", help="the .pth state_dict file")
  i.add_argument("--workdir", required=True, help="a new folder: params.npz, import.json, import_report.json")
  i.set_defaults(func=_import)
  s = sub.add_parser("serve", help="serve workdirs over HTTP (OIP v2, TF-Serving REST, uploads, web page) and gRPC")
  s.add_argument("--workdir", action="append",
                 help="W, NAME=W or NAME:VERSION=W (a run or an `imgrec import` folder); repeat to serve several "
                 "models/versions")
  s.add_argument("--model-repository", help="DIR of DIR/NAME/VERSION/ folders (runs, import folders, export "
                 "artifacts) and optional DIR/NAME/model.json settings")
  s.add_argument("--model-control-mode", default="none", choices=("none", "explicit", "poll"),
                 help="none: load every model at start; explicit: --load-model, then the repository API; poll: "
                 "follow the folder")
  s.add_argument("--load-model", action="append", default=[], metavar="NAME",
                 help="explicit mode: load NAME at start (repeatable; '*' for all)")
  s.add_argument("--repository-poll-secs", type=float, default=15.0, help="poll mode: seconds between scans")
  s.add_argument("--memory-budget", help="bytes loaded models may hold (8G, 512M) or a fraction of memory (0.5); "
                 "a request then loads its model and idle ones are evicted, least recently used first")
  s.add_argument("--admin-keys-file", help="keys for model management (repository index, load, unload) and the "
                 "routes that change a model's state (a face gallery's enroll, delete); with --api-keys-file an "
                 "inference key gets 403 there")
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
  w = sub.add_parser("sweep", help="hyper-parameter search on Optuna; each trial an `imgrec train` workdir",
                     epilog="--config.KEY=VALUE overrides apply to every trial. Rerun the same command to continue "
                     "a killed sweep; run it in several processes (same --storage) to share the trials.")
  w.add_argument("--config", help="configs/FILE.py[:ARGS] (default: small CNN on digits)")
  w.add_argument("--study", required=True, help="directory of the study: trial-N/ workdirs, results.md, PNGs")
  w.add_argument("--trials", type=int, required=True, help="finished (complete or pruned) trials to reach")
  w.add_argument("--space", action="append", default=[], metavar="KEY=DIST",
                 help="a searched config key: loguniform(a,b), uniform(a,b), int(a,b), logint(a,b), "
                 "choice(x,y,...); repeat for more keys")
  w.add_argument("--storage", help="Optuna storage URL (default: sqlite:///STUDY/study.db)")
  w.add_argument("--study-name", help="study name in the storage (default: the --study folder's name)")
  w.add_argument("--metric", default="", help="val.METRIC, one the task may select on (default: the config's "
                 "select_metric; classification: val.accuracy or val.loss; needs data.val_fraction > 0)")
  w.add_argument("--direction", choices=("maximize", "minimize"), help="default: minimize a loss, else maximize")
  w.add_argument("--pruner", default="median", help="median, hyperband, halving or none")
  w.add_argument("--sampler", default="tpe", help="tpe, random or grid (grid: every --space a choice)")
  w.add_argument("--heartbeat", type=int, default=10,
                 help="seconds between trial heartbeats; a trial silent for twice that is retried")
  w.set_defaults(func=_sweep)
  m = sub.add_parser("models", help="list registered models: family, parameters, input size (GFLOPs with --flops)")
  m.add_argument("names", nargs="*", help="models to describe (default: all)")
  m.add_argument("--num-classes", dest="head_size", type=int, default=1000, help="outputs of the head (classes)")
  m.add_argument("--flops", nargs="*", metavar="NAME",
                 help="also forward GFLOPs (a compile each, then cached): of NAMEs, or of every listed model")
  m.add_argument("--json", action="store_true", help="print the rows as JSON")
  m.set_defaults(func=_models)
  d = sub.add_parser("make-detection-data", help="write the embedded detection set (digits on textured canvases) "
                     "as COCO JSON + PNG folders, with a preview.png")
  d.add_argument("dir", help="output directory (coco:DIR reads it)")
  d.add_argument("--train", type=int, default=2000, help="training images")
  d.add_argument("--test", type=int, default=500, help="test images (from other source digits than train's)")
  d.add_argument("--size", type=int, default=96, help="square canvas size in pixels")
  d.add_argument("--glyphs", default="digits", choices=("digits", "fashion_mnist"),
                 help="what is pasted: sklearn's digits, or Fashion-MNIST items (Debian's dataset-fashion-mnist)")
  d.set_defaults(func=_make_detection_data)
  s = sub.add_parser("make-segmentation-data", help="write the embedded segmentation set (digits on textured "
                     "canvases, exact label maps) as images/ + masks/ PNG folders, with a preview.png")
  s.add_argument("dir", help="output directory (seg:DIR reads it)")
  s.add_argument("--train", type=int, default=2000, help="training images")
  s.add_argument("--test", type=int, default=500, help="test images (from other source digits than train's)")
  s.add_argument("--size", type=int, default=96, help="square canvas size in pixels")
  s.set_defaults(func=_make_segmentation_data)
  return p


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  # --config.KEY=VALUE overrides are not argparse options; take them out first.
  overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
  rest = [a for a in argv if not a.startswith("--config.")]
  args = parser().parse_args(rest)
  if overrides and args.command not in ("train", "augment-preview", "sweep", "eval", "robustness", "explain", "serve"):
    print("imgrec: error: --config.KEY=VALUE overrides apply to `imgrec train` and `imgrec sweep` (and "
          "--config.data.dir/source to eval, robustness, explain and serve)", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
  try:
    from imgrec import checkpoint, compile_cache
    checkpoint.quiet_background_errors()  # a failed save is one line, not Orbax's thread tracebacks
    compile_cache.enable()  # before any command compiles; `train` may point it elsewhere (compile_cache key)
    args.func(args, overrides)
  except UserError as e:
    print(f"imgrec: error: {e}", file=sys.stderr)
    return 2
  except Preempted as e:
    print(f"imgrec: {e}", file=sys.stderr)
    return EXIT_PREEMPTED
  return 0


if __name__ == "__main__":
  sys.exit(main())
