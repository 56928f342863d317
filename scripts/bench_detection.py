"""imgrec's detector against torchvision's FCOS, side by side: same generated set, image size, batch, steps,
optimiser (AdamW, warmup + cosine), both from scratch, both scored by the same pycocotools on the same test set.

  python scripts/bench_detection.py --torch-python /path/to/venv/bin/python --rounds 3 --out bench_det

The torchvision side runs scripts/bench_detection_torchvision.py in an environment that has torch and
torchvision (`--torch-python`; `pip install torch torchvision pycocotools` there). Rounds alternate imgrec and
torchvision, each a fresh process, so a drift of the machine's speed hits both. Writes OUT/results.json (every
round), OUT/detection_side_by_side.png (AP and train img/s per round) and prints a markdown table of medians.
The data set is written once with `imgrec make-detection-data`; imgrec reads the same images from memory
(data.source=digit_boxes, which generates exactly what the command wrote; `--imgrec-source files` reads the
written PNGs through coco:DIR instead), torchvision holds them decoded in memory.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from imgrec import plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, env=None):
  print("$ " + " ".join(cmd), flush=True)
  proc = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=True)
  if proc.returncode:
    sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc.stdout


def imgrec_round(a, data, workdir):
  source = ("digit_boxes" if a.imgrec_source == "memory" else f"coco:{data}")
  args = [sys.executable, "-m", "imgrec", "train", "--config", a.config, "--workdir", workdir,
          f"--config.data.source={source}", f"--config.data.digit_boxes_train={a.train}",
          f"--config.data.digit_boxes_test={a.test}", f"--config.data.digit_boxes_size={a.size}",
          f"--config.data.pp_train=decode|letterbox({a.size})", f"--config.data.pp_eval=decode|letterbox({a.size})",
          "--config.data.val_fraction=0", f"--config.steps={a.steps}", f"--config.batch_size={a.batch}",
          "--config.optim.name=adamw", f"--config.optim.lr={a.lr}", f"--config.optim.weight_decay={a.weight_decay}",
          "--config.optim.schedule=cosine", f"--config.optim.warmup_steps={a.warmup}",
          f"--config.model.name={a.backbone}", "--config.model.kwargs.width=64", "--config.optim.grad_clip=0",
          # torchvision's FCOS head: a 256-wide FPN on P3-P7, four GroupNorm convs per tower, top 1000 before NMS
          "--config.detection.fpn_channels=256", "--config.detection.head_convs=4",
          "--config.detection.levels=(3,4,5,6,7)", "--config.detection.pre_nms_topk=1000", f"--config.log_every={a.log_every}", f"--config.eval_every={a.steps}",
          *a.imgrec_arg]
  run(args, env=dict(os.environ, PYTHONPATH=ROOT))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  train = [r["img_per_sec"] for r in records if r["split"] == "train"][1:]  # the first holds the compile
  final = [r for r in records if r["split"] == "test"][-1]
  return {"AP": final["AP"], "AP50": final["AP50"], "AP75": final["AP75"], "AR100": final["AR100"],
          "train_img_per_sec": statistics.median(train)}


def torch_round(a, data, out):
  run([a.torch_python, os.path.join(ROOT, "scripts", "bench_detection_torchvision.py"), "--data", data,
       "--size", str(a.size), "--steps", str(a.steps), "--batch", str(a.batch), "--lr", str(a.lr),
       "--weight-decay", str(a.weight_decay), "--warmup", str(a.warmup), "--out", out])
  with open(out) as f:
    return json.load(f)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--torch-python", required=True, help="python of an environment with torch and torchvision")
  p.add_argument("--config", default=os.path.join(ROOT, "configs", "detection_digits.py"))
  p.add_argument("--backbone", default="resnet18")
  p.add_argument("--train", type=int, default=2000)
  p.add_argument("--test", type=int, default=500)
  p.add_argument("--size", type=int, default=96)
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--warmup", type=int, default=50)
  p.add_argument("--log-every", type=int, default=50)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--imgrec-source", choices=("memory", "files"), default="memory")
  p.add_argument("--imgrec-arg", action="append", default=[], help="an extra --config.KEY=VALUE for imgrec")
  p.add_argument("--out", default="bench_detection")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  data = os.path.abspath(os.path.join(a.out, "data"))
  if not os.path.isdir(data):
    run([sys.executable, "-m", "imgrec", "make-detection-data", data, "--train", str(a.train), "--test", str(a.test),
         "--size", str(a.size)], env=dict(os.environ, PYTHONPATH=ROOT))
  rounds = []
  for i in range(a.rounds):
    workdir = os.path.abspath(os.path.join(a.out, f"imgrec_round{i}"))
    if os.path.exists(workdir):
      sys.exit(f"{workdir} exists: give a new --out (this script never reuses or deletes a run)")
    r = {"imgrec": imgrec_round(a, data, workdir),
         "torchvision": torch_round(a, data, os.path.join(a.out, f"torchvision_round{i}.json"))}
    print(json.dumps(r), flush=True)
    rounds.append(r)
  with open(os.path.join(a.out, "results.json"), "w") as f:
    json.dump({"args": vars(a), "rounds": rounds}, f, indent=2)
  plots.plot_side_by_side(rounds, (("AP", "COCO AP (test)"), ("train_img_per_sec", "train img/s")),
                          os.path.join(a.out, "detection_side_by_side.png"))
  med = lambda side, key: statistics.median(r[side][key] for r in rounds)
  ratio = statistics.median(r["imgrec"]["train_img_per_sec"] / r["torchvision"]["train_img_per_sec"] for r in rounds)
  print(f"\n| medians of {a.rounds} rounds | imgrec | torchvision FCOS |\n|---|---:|---:|")
  for key in ("AP", "AP50", "AP75", "AR100", "train_img_per_sec"):
    print(f"| {key} | {med('imgrec', key):.4f} | {med('torchvision', key):.4f} |")
  print(f"\ntrain speed imgrec/torchvision, median of per-round ratios: {ratio:.2f}x")


if __name__ == "__main__":
  main()
