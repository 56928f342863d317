"""Detection's settings: its keys in the full schema (imgrec.config.defaults()), their checks, and which of them
may change when a run resumes. Read by imgrec/config.py and imgrec/resume.py through imgrec/tasks."""
from imgrec.errors import UserError

NAME = "detection"
SELECT = {"AP": "max", "AP50": "max", "AP75": "max", "AR100": "max"}  # what model selection may maximise
DEFAULT_SELECT = "AP"
DECODED_SOURCES = ("coco:", "digit_boxes", "tfds:")  # sources whose images are decoded on the host (data.pp_* apply)


def settings():
  """{section: {key: default}}: the keys this task adds to the schema."""
  return {
      "data": {
          # Boxes per example, padded to this static size (batches need one shape); an image with more keeps its
          # largest (COCO's most crowded image has 93 non-crowd boxes).
          "max_boxes": 100,
          # digit_boxes, the embedded detection set: images generated per split, and their square canvas size.
          "digit_boxes_train": 2000,
          "digit_boxes_test": 500,
          "digit_boxes_size": 96,
          "digit_boxes_glyphs": "digits",  # or "fashion_mnist" (the Debian package dataset-fashion-mnist)
      },
      # the FCOS head, loss and decoding (imgrec/tasks/detection)
      "detection": {
          "fpn_channels": 256,  # width of the FPN and of the head towers
          "levels": (3, 4, 5, 6, 7),  # pyramid levels (stride 2**level), consecutive; past 5 from stride-2 convs
          "head_convs": 4,  # conv + GroupNorm + relu layers in each of the class and box towers
          "prior_prob": 0.01,  # initial class probability of every point (focal-loss bias init)
          "center_radius": 1.5,  # centre sampling: positives lie within this many strides of a box's centre
          "cls_weight": 1.0,  # weight of the sigmoid focal loss (alpha 0.25, gamma 2) on the classes
          "box_weight": 1.0,  # weight of the GIoU loss on positive points (weighted by their centerness)
          "ctr_weight": 1.0,  # weight of the centerness BCE
          "l1_weight": 0.0,  # weight of an L1 loss on ltrb distances divided by the stride (FCOS: none)
          "num_detections": 100,  # K: detections kept per image after NMS (COCO's AR@100 needs 100)
          "pre_nms_topk": 1000,  # (point, class) candidates scored before NMS; its cost grows as its square
          "nms_iou": 0.6,  # class-aware NMS drops a box overlapping a better one of its class above this
          "score_threshold": 0.05,  # detections scoring below this are dropped
      },
  }


# Every detection key defines the run: the head and loss shape the weights, decoding sets the val AP that
# selection compared, and the data keys are the targets and the generated set.
MAY_CHANGE = ()


def validate(cfg):
  d = cfg.data
  if d.max_boxes < 1:
    raise UserError(f"data.max_boxes must be positive (boxes kept per image), got {d.max_boxes}")
  if d.digit_boxes_train < 1 or d.digit_boxes_test < 1 or d.digit_boxes_size < 32:
    raise UserError(f"digit_boxes needs data.digit_boxes_train and _test >= 1 and data.digit_boxes_size >= 32 "
                    f"(glyphs are 12-48 px), got {d.digit_boxes_train}, {d.digit_boxes_test}, {d.digit_boxes_size}")
  if d.digit_boxes_glyphs not in ("digits", "fashion_mnist"):
    raise UserError(f"data.digit_boxes_glyphs must be digits or fashion_mnist, got {d.digit_boxes_glyphs!r}")
  d = cfg.detection
  levels = tuple(d.levels)
  if not levels or min(levels) < 2 or levels != tuple(range(levels[0], levels[0] + len(levels))):
    raise UserError(f"detection.levels must be consecutive pyramid levels from 2 up (stride 2**level: the backbone "
                    f"gives 4, 8, 16, 32), e.g. (3, 4, 5, 6, 7); got {levels}")
  if d.fpn_channels < 1 or d.head_convs < 0:
    raise UserError(f"detection.fpn_channels must be >= 1 and detection.head_convs >= 0, got {d.fpn_channels} and "
                    f"{d.head_convs}")
  if not 0 < d.prior_prob < 1 or d.center_radius <= 0:
    raise UserError(f"detection.prior_prob must be in (0, 1) and detection.center_radius > 0, got {d.prior_prob} "
                    f"and {d.center_radius}")
  weights = {k: d[k] for k in ("cls_weight", "box_weight", "ctr_weight", "l1_weight")}
  if any(w < 0 for w in weights.values()):
    raise UserError(f"detection loss weights must be >= 0, got {weights}")
  if d.num_detections < 1 or d.pre_nms_topk < d.num_detections:
    raise UserError(f"detection.num_detections must be >= 1 and detection.pre_nms_topk at least as large, got "
                    f"{d.num_detections} and {d.pre_nms_topk}")
  if not 0 < d.nms_iou <= 1 or not 0 <= d.score_threshold < 1:
    raise UserError(f"detection.nms_iou must be in (0, 1] and detection.score_threshold in [0, 1), got {d.nms_iou} "
                    f"and {d.score_threshold}")
