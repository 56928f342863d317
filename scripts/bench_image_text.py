"""Linear probe against zero-shot on the image-text recipe's image features (issue 29, "Measured").

  python scripts/bench_image_text.py --out OUT [--workdir W | --steps N] [--config configs/image_text_glyphs.py]

(a) The glyph recipe's run: W when it holds a checkpoint, else trained into W (default OUT/run) by
    `imgrec train --config CONFIG --workdir W [--config.steps=N]` (the same code path, evaluations included).
(b) The image tower's embeddings (the task's own eval fn, streamed like `imgrec eval`) of the caption set's train
    split and of its test split: the held-out colour/background pairs (unseen in training) and the seen ones.
(c) A linear probe: multinomial logistic regression (scikit-learn, L2, C=1) on the digit label, fitted on the
    standardised train embeddings; its accuracy on the held-out and the seen test examples beside the run's
    zero-shot accuracy (argmax of the zero-shot logits, image_text.templates or the tokenizer's template) on the
    same examples.
(d) The same run on scikit-learn's digits (`imgrec eval --config.data.source=digits`'s zero-shot, class names
    "0".."9"), and zero-shot with the names written as the caption words ("zero".."nine"), beside a probe fitted on
    digits' train split.
Prints a markdown table and writes OUT/image_text.json and OUT/image_text.png (bars: probe against zero-shot).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from imgrec import cli, evaluate, parallel, steps, workdir as wd  # noqa: E402
from imgrec.plots import plot_side_by_side  # noqa: E402
from imgrec.tasks import image_text as task  # noqa: E402
from imgrec.tasks.image_text import captions  # noqa: E402


def trained_run(workdir, config, steps_):
  """The workdir of a trained run of `config`: `workdir` as it is when it has a checkpoint, else trained there."""
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    print(f"using the trained run {workdir}", flush=True)
    return workdir
  args = ["train", "--config", config, "--workdir", workdir] + ([f"--config.steps={steps_}"] if steps_ else [])
  t = time.perf_counter()
  if cli.main(args) != 0:
    sys.exit(f"training {workdir} failed")
  print(f"trained {workdir} in {time.perf_counter() - t:.0f} s", flush=True)
  return workdir


def embed(run, split, class_names, batch=256):
  """{"image_embeds", "logits", "label"} of a split through the task's eval fn (zero-shot over `class_names`)."""
  info = {**run.info, "class_names": list(class_names)}
  out = steps.stream(task.make_eval_fn(run.model, info, run.cfg), run.variables, split, batch, parallel.make_mesh(),
                     desc="embed")
  return {k: np.asarray(out[k]) for k in ("image_embeds", "logits", "label")}


def probe(train):
  """A fitted (scaler, multinomial logistic regression) on the train embeddings' labels."""
  scaler = StandardScaler().fit(train["image_embeds"])
  clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(train["image_embeds"]), train["label"])
  return lambda x: clf.predict(scaler.transform(x))


def row(name, fitted, out, keep):
  """{name, examples, probe, zeroshot} of the examples `keep` of `out`."""
  x, y = out["image_embeds"][keep], out["label"][keep]
  return {"examples": name, "n": int(keep.sum()), "probe": float(np.mean(fitted(x) == y)),
          "zeroshot": float(np.mean(out["logits"][keep].argmax(1) == y))}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--workdir", help="a trained run of the recipe (default: train one into OUT/run)")
  p.add_argument("--config", default="configs/image_text_glyphs.py")
  p.add_argument("--steps", type=int, default=0, help="train this many steps (0: the recipe's)")
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  w = trained_run(args.workdir or os.path.join(args.out, "run"), args.config, args.steps)

  run = wd.restore(w, params_only=True)
  ds = wd.dataset(run)
  train, test = ds.split(run.cfg.data.train_split), ds.split("test")
  names = ds.class_names
  fitted = probe(embed(run, train, names))
  out = embed(run, test, names)
  rows = [row("caption set, held-out pairs", fitted, out, test.unseen),
          row("caption set, seen pairs", fitted, out, ~test.unseen)]

  digits_run = wd.restore(w, params_only=True, overrides=("data.source=digits",))
  digits = wd.dataset(digits_run)
  zs = evaluate.evaluate_workdir(w, report=False, overrides=("data.source=digits",))
  d_fitted = probe(embed(digits_run, digits.split("train"), digits.class_names))
  d_test = digits.split("test")
  as_digits = embed(digits_run, d_test, digits.class_names)
  as_words = embed(digits_run, d_test, captions.DIGITS)
  every = np.ones(len(d_test), bool)
  rows += [row('sklearn digits test, names "0".."9"', d_fitted, as_digits, every),
           row('sklearn digits test, names "zero".."nine"', d_fitted, as_words, every)]
  assert abs(rows[2]["zeroshot"] - zs["zeroshot_accuracy"]) < 1e-6, (rows[2], zs["zeroshot_accuracy"])

  result = {"workdir": w, "step": int(run.state.step), "config": args.config, "rows": rows,
            "digits_eval": {k: zs[k] for k in ("zeroshot_accuracy", "zeroshot_top5", "examples")},
            "probe": "sklearn LogisticRegression(C=1, lbfgs, multinomial) on standardised image embeddings"}
  with open(os.path.join(args.out, "image_text.json"), "w") as f:
    json.dump(result, f, indent=2)
  plot_side_by_side([{"probe": {"acc": r["probe"]}, "zero-shot": {"acc": r["zeroshot"]}} for r in rows],
                    [("acc", f"accuracy, step {result['step']} (chance 0.10)")],
                    os.path.join(args.out, "image_text.png"), sides=("probe", "zero-shot"),
                    labels=["held-out\npairs", "seen\npairs", "digits\n0..9", "digits\nzero..nine"])
  print(f"\nstep {result['step']} of {w}\n")
  print("| examples | n | linear probe | zero-shot |\n|---|---|---|---|")
  for r in rows:
    print(f"| {r['examples']} | {r['n']} | {r['probe']:.3f} | {r['zeroshot']:.3f} |")
  print(f"\n`imgrec eval --config.data.source=digits`: zero-shot {zs['zeroshot_accuracy']:.3f}, "
        f"top-5 {zs['zeroshot_top5']:.3f} ({zs['examples']} examples)")


if __name__ == "__main__":
  main()
