"""Small BatchNorm CNN on Fashion-MNIST, sized for a 2-core CPU (the cnn family's config).

  apt-get install -y dataset-fashion-mnist
  imgrec train --config configs/fashion_mnist_cnn.py --workdir runs/fmnist_cnn
  imgrec train --config configs/fashion_mnist_cnn.py:quick=True   # 300 steps
  (LeNet-5 and AlexNet: configs/fashion_mnist_lenet.py, model=alexnet)

Measured by `python scripts/bench_fashion_mnist.py --seeds 0,1,2` (2-core CPU, quiet): test accuracy
0.9241 / 0.9231 / 0.9242 in 287 / 284 / 350 s wall (median 287 s), compile and evaluations included
(BENCHMARKS.md, "Training core").

How dropout 0.1 was chosen: first on test accuracy (0.3 was under 92% on test), which makes those test figures
optimistic. Re-selected on validation (2026-12-04, seed 0, 2-core CPU shared with other jobs): trained with
--config.data.val_fraction=0.1 --config.data.eval_split=val (10% of train held out, test unseen), dropout 0.1
reached best val accuracy 0.9243 and dropout 0.3 0.9218 (one seed each: a 0.25 pt gap, within one standard
error of 6000 val images, ~0.34 pt), so 0.1 stays. That selected run, evaluated once on test
(`imgrec eval --split test`, its best-val checkpoint, trained on 90% of train): 0.9228.
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  c = fashion_mnist_zoo(arg, "small_cnn", dict(widths=(32, 64), hidden=128, dropout=0.1), {},
                        epochs=5.0, lr=3e-3, weight_decay=5e-4)
  if c.steps == 0:
    c.optim.warmup_epochs = 0.3
    c.log_every = 100
  return c
