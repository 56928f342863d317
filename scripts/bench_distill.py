"""Distillation benchmark: a small student trained alone vs distilled from a teacher workdir.

  python scripts/bench_distill.py --teacher W [--steps 500] [--widths 8,16] [--hidden 32]

Both students use the teacher's data config, the same seed, steps and batch size.
"""
import argparse
import tempfile

from imgrec import config, train


def student(teacher_cfg, widths, hidden, steps, teacher=""):
  cfg = config.defaults()
  cfg.data = teacher_cfg.data
  cfg.batch_size = teacher_cfg.batch_size
  cfg.model.name = "small_cnn"
  cfg.model.kwargs.widths = widths
  cfg.model.kwargs.hidden = hidden
  cfg.steps = steps
  cfg.eval_every = cfg.checkpoint_every = steps
  cfg.log_every = 100
  cfg.distill.teacher = teacher
  return cfg


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--teacher", required=True)
  p.add_argument("--steps", type=int, default=500)
  p.add_argument("--widths", default="8,16")
  p.add_argument("--hidden", type=int, default=32)
  p.add_argument("--alpha", type=float, default=0.5)
  p.add_argument("--temperature", type=float, default=4.0)
  args = p.parse_args()
  t_cfg = config.load_saved(f"{args.teacher}/config.json")
  widths = tuple(int(w) for w in args.widths.split(","))
  root = tempfile.mkdtemp(prefix="bench_distill_")
  alone = train.train(student(t_cfg, widths, args.hidden, args.steps), f"{root}/alone")[1]["accuracy"]
  cfg = student(t_cfg, widths, args.hidden, args.steps, args.teacher)
  cfg.distill.alpha, cfg.distill.temperature = args.alpha, args.temperature
  distilled = train.train(cfg, f"{root}/distilled")[1]["accuracy"]
  print(f"student small_cnn widths {widths} hidden {args.hidden}, {args.steps} steps on {t_cfg.data.source}: "
        f"alone {alone:.4f}, distilled (alpha {args.alpha}, T {args.temperature}) {distilled:.4f}")


if __name__ == "__main__":
  main()
