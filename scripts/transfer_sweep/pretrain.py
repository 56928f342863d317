"""Pretrain small_cnn (16, 32) on digits 0-4 with an augmentation string: pretrain.py OUT STEPS AUG."""
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_transfer as bt
from imgrec import train
out, steps, aug = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = bt.base_config("small_cnn", steps, 0)
cfg.batch_size = 32
cfg.data.classes = (0, 1, 2, 3, 4)
cfg.data.augment = aug
cfg.eval_every = cfg.checkpoint_every = steps
print(out, aug, train.train(cfg, out)[1]["accuracy"])
