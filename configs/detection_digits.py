"""FCOS on digit_boxes, the embedded generated detection set (digits pasted on textured canvases): no download.

  imgrec train --config configs/detection_digits.py --workdir runs/detection_digits
  imgrec eval --workdir runs/detection_digits      # report/: report.md, detections.png, precision_recall.png

A one-block-per-stage ResNet 16 channels wide ("tiny", width 16) with a 32-channel FPN on P3-P5, 1000 steps of
32 images (96x96, 1800 train images; 200 held out as val for selection on AP).

Expected (measured twice, bit-identical): best val AP 0.332 at step 750; test AP 0.303 (AP50 0.488, AP75 0.344,
APs 0.255, APm 0.474, AR100 0.562) on the 500 test images. Wall time 7-9 min (6:57 and 8:36, compiles included)
on a 2-core AMD EPYC VM shared with other jobs (the run got 67-70% of one core).
"""
from imgrec.config import defaults


def get_config(arg=None):
  del arg
  c = defaults()
  c.task = "detection"
  c.data.source = "digit_boxes"
  c.data.max_boxes = 8            # digit_boxes images hold 1-6 digits
  # No flip (digits are not mirror-symmetric) and no scale jitter: the eval letterbox, which at 96 px keeps the
  # canvas as it is.
  c.data.pp_train = "decode|letterbox(96)"
  c.data.val_fraction = 0.1
  c.model.name = "tiny"
  c.model.kwargs.width = 16
  c.detection.fpn_channels = 32
  c.detection.head_convs = 2
  c.detection.levels = (3, 4, 5)  # strides 8-32: digits are 12-48 px
  c.detection.pre_nms_topk = 300
  c.batch_size = 32
  c.steps = 1000
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 50
  c.optim.grad_clip = 5.0
  c.select_metric = "AP"
  c.eval_every = 250
  c.checkpoint_every = 250
  c.log_every = 50
  return c
