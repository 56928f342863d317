"""The segmentation task's settings: its config section, the data keys it adds, validation, resume rules and
model selection. Read by imgrec/config.py and imgrec/resume.py through imgrec/tasks."""
from imgrec.errors import UserError

NAME = "segmentation"
SELECT = {"mIoU": "max", "pixel_accuracy": "max", "mean_accuracy": "max"}  # what model selection may maximise
DEFAULT_SELECT = "mIoU"
HEADS = ("fcn", "aspp")
# Sources whose images are decoded on the host (data.pp_train / data.pp_eval apply): all of them.
DECODED_SOURCES = ("digit_masks", "seg:", "tfds:")
# Keys that may change when a run resumes: evaluation only, the trained function stays the same.
MAY_CHANGE = ("segmentation.eval_size", "data.digit_masks_test")


def settings():
  """{section: {key: default}}: the segmentation section and the keys it adds to data."""
  return {
      "data": {
          # digit_masks, the embedded segmentation set (digit_boxes' canvases with exact label maps): images
          # generated per split, and their square canvas size.
          "digit_masks_train": 2000,
          "digit_masks_test": 500,
          "digit_masks_size": 96,
      },
      # the segmentation head and evaluation (imgrec/tasks/segmentation)
      NAME: {
          "head": "fcn",  # fcn: 3x3 conv + BN + relu + dropout + 1x1 (FCN's head); aspp: DeepLabV3's ASPP head
          "feature_stride": 0,  # the backbone feature map the head reads, by stride (8, 16, 32); 0: the deepest
          "channels": 0,  # the head's width; 0: a quarter of the feature map's channels (fcn) or 256 (aspp)
          "aspp_rates": (6, 12, 18),  # aspp: dilation rates of its 3x3 branches (besides 1x1 and image pooling)
          "dropout": 0.1,  # dropout before the head's last 1x1 conv (training only)
          # Evaluation scores at the source image's resolution, its label map padded to this square (a larger
          # source is scored on a nearest-reduced grid that fits).
          "eval_size": 512,
          # Classes when the source cannot name them (seg:DIR without classes.txt, an unknown tfds set); 0: from
          # classes.txt or the source, else the masks' largest id + 1.
          "num_classes": 0,
      },
  }


def validate(cfg):
  """UserError for a bad segmentation setting, before any work."""
  s, d = cfg[NAME], cfg.data
  if s.head not in HEADS:
    raise UserError(f"segmentation.head must be one of {', '.join(HEADS)}, got {s.head!r}")
  if s.feature_stride < 0 or (s.feature_stride and s.feature_stride & (s.feature_stride - 1)):
    raise UserError(f"segmentation.feature_stride must be 0 (the deepest map) or a power of two, got "
                    f"{s.feature_stride}")
  if s.channels < 0 or not 0 <= s.dropout < 1:
    raise UserError(f"segmentation.channels must be >= 0 and segmentation.dropout in [0, 1), got {s.channels} and "
                    f"{s.dropout}")
  if not s.aspp_rates or any(int(r) != r or r < 1 for r in s.aspp_rates):
    raise UserError(f"segmentation.aspp_rates must be positive whole dilation rates, got {tuple(s.aspp_rates)}")
  if s.eval_size < 8:
    raise UserError(f"segmentation.eval_size must be at least 8 pixels, got {s.eval_size}")
  if s.num_classes < 0 or s.num_classes > 255:
    raise UserError(f"segmentation.num_classes must be in 0..255 (class ids are uint8, 255 = ignore), got "
                    f"{s.num_classes}")
  if d.digit_masks_train < 1 or d.digit_masks_test < 1 or d.digit_masks_size < 32:
    raise UserError(f"digit_masks needs data.digit_masks_train and _test >= 1 and data.digit_masks_size >= 32 "
                    f"(glyphs are 12-48 px), got {d.digit_masks_train}, {d.digit_masks_test}, {d.digit_masks_size}")
