"""ViT-S/4: 7x7 = 49 patch tokens + class token at 28x28.

  imgrec train --config configs/fashion_mnist_vit.py --workdir runs/fashion_mnist_vit
  imgrec train --config configs/fashion_mnist_vit.py:quick=True   # small widths, 300 steps

Expected: not measured yet (full run or quick=True); scripts/bench_zoo.py did not reach this family
in the CPU session of 2026-11-23 (BENCHMARKS.md).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'vit_s4', {'drop_path_rate': 0.1},
                           {'width': 64, 'depth': 4, 'heads': 4, 'mlp_dim': 128}, lr=1e-3, weight_decay=0.05, grad_clip=1.0)
