"""imgrec's FCN against torchvision's FCN, side by side: same generated set (digit_masks), image size, batch,
steps, optimiser (AdamW, warmup + cosine), both from scratch on the same ResNet-18 shape (an FCN head on the
stride-32 map, logits upsampled bilinearly), both scored by the same mIoU code (imgrec's metrics.scores on each
side's test confusion matrix).

  python scripts/bench_segmentation.py --rounds 3 --out bench_seg

torchvision runs scripts/bench_segmentation_torchvision.py (`--torch-python`, default this python: torch and
torchvision are test dependencies). Rounds alternate imgrec and torchvision, each a fresh process, so a drift of
the machine's speed hits both. The data set is written once with `imgrec make-segmentation-data`; imgrec reads
the same images from memory (data.source=digit_masks generates exactly what the command wrote), torchvision
holds the written PNGs decoded in memory. Writes OUT/results.json (every round), OUT/segmentation_side_by_side.png
(mIoU and train img/s per round) and prints a markdown table of medians.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from imgrec import plots

from imgrec.tasks.segmentation import metrics, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, env=None):
  print("$ " + " ".join(cmd), flush=True)
  proc = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=True)
  if proc.returncode:
    sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc.stdout


def imgrec_round(a, workdir):
  args = [sys.executable, "-m", "imgrec", "train", "--workdir", workdir, "--config.task=segmentation",
          "--config.select_metric=mIoU", "--config.data.source=digit_masks", f"--config.data.digit_masks_train={a.train}",
          f"--config.data.digit_masks_test={a.test}", f"--config.data.digit_masks_size={a.size}",
          f"--config.data.pp_train=decode|letterbox({a.size})", f"--config.data.pp_eval=decode|letterbox({a.size})",
          "--config.data.val_fraction=0", f"--config.steps={a.steps}", f"--config.batch_size={a.batch}",
          "--config.optim.name=adamw", f"--config.optim.lr={a.lr}", f"--config.optim.weight_decay={a.weight_decay}",
          "--config.optim.schedule=cosine", f"--config.optim.warmup_steps={a.warmup}", "--config.optim.grad_clip=0",
          # torchvision's FCN on resnet18's layer4: FCNHead(512 -> 128 -> K), dropout 0.1
          "--config.model.name=resnet18", "--config.segmentation.head=fcn",
          "--config.segmentation.feature_stride=0", "--config.segmentation.channels=0",
          "--config.segmentation.dropout=0.1", f"--config.log_every={a.log_every}", f"--config.eval_every={a.steps}",
          f"--config.checkpoint_every={a.steps}", *a.imgrec_arg]
  run(args, env=dict(os.environ, PYTHONPATH=ROOT))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  train = [r["img_per_sec"] for r in records if r["split"] == "train"][1:]  # the first holds the compile
  final = [r for r in records if r["split"] == "test"][-1]
  return {"mIoU": final["mIoU"], "pixel_accuracy": final["pixel_accuracy"],
          "train_img_per_sec": statistics.median(train)}


def torch_round(a, data, out):
  run([a.torch_python, os.path.join(ROOT, "scripts", "bench_segmentation_torchvision.py"), "--data", data,
       "--model", a.torch_model, "--steps", str(a.steps), "--batch", str(a.batch), "--lr", str(a.lr),
       "--weight-decay", str(a.weight_decay), "--warmup", str(a.warmup), "--out", out])
  with open(out) as f:
    r = json.load(f)
  s = metrics.scores(r["confusion"], synthetic.CLASS_NAMES)  # the same mIoU code as imgrec's evaluation
  return {"mIoU": s["mIoU"], "pixel_accuracy": s["pixel_accuracy"], "train_img_per_sec": r["train_img_per_sec"]}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--torch-python", default=sys.executable, help="python of an environment with torch and torchvision")
  p.add_argument("--torch-model", default="resnet18", choices=("resnet18", "fcn_resnet50"))
  p.add_argument("--train", type=int, default=1000)
  p.add_argument("--test", type=int, default=200)
  p.add_argument("--size", type=int, default=96)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--warmup", type=int, default=30)
  p.add_argument("--log-every", type=int, default=25)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--imgrec-arg", action="append", default=[], help="an extra --config.KEY=VALUE for imgrec")
  p.add_argument("--out", default="bench_segmentation")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  data = os.path.abspath(os.path.join(a.out, "data"))
  if not os.path.isdir(data):
    run([sys.executable, "-m", "imgrec", "make-segmentation-data", data, "--train", str(a.train), "--test",
         str(a.test), "--size", str(a.size)], env=dict(os.environ, PYTHONPATH=ROOT))
  rounds = []
  for i in range(a.rounds):
    workdir = os.path.abspath(os.path.join(a.out, f"imgrec_round{i}"))
    if os.path.exists(workdir):
      sys.exit(f"{workdir} exists: give a new --out (this script never reuses or deletes a run)")
    r = {"imgrec": imgrec_round(a, workdir),
         "torchvision": torch_round(a, data, os.path.join(a.out, f"torchvision_round{i}.json"))}
    print(json.dumps(r), flush=True)
    rounds.append(r)
  with open(os.path.join(a.out, "results.json"), "w") as f:
    json.dump({"args": vars(a), "rounds": rounds}, f, indent=2)
  plots.plot_side_by_side(rounds, (("mIoU", "test mIoU"), ("train_img_per_sec", "train img/s")),
                          os.path.join(a.out, "segmentation_side_by_side.png"))
  med = lambda side, key: statistics.median(r[side][key] for r in rounds)
  ratio = statistics.median(r["imgrec"]["train_img_per_sec"] / r["torchvision"]["train_img_per_sec"] for r in rounds)
  print(f"\n| medians of {a.rounds} rounds | imgrec FCN | torchvision FCN |\n|---|---:|---:|")
  for key in ("mIoU", "pixel_accuracy", "train_img_per_sec"):
    print(f"| {key} | {med('imgrec', key):.4f} | {med('torchvision', key):.4f} |")
  print(f"\ntrain speed imgrec/torchvision, median of per-round ratios: {ratio:.2f}x")


if __name__ == "__main__":
  main()
