"""The detection task: its config block's validation, and the task functions on a tiny detector."""
import pytest

from imgrec import config
from imgrec.errors import UserError


@pytest.mark.parametrize("key,value,message", [
    ("levels", (3, 5), "consecutive"), ("levels", (1, 2), "from 2 up"), ("pre_nms_topk", 50, "at least as large"),
    ("nms_iou", 0.0, "nms_iou"), ("l1_weight", -1.0, "weights"), ("prior_prob", 1.0, "prior_prob")])
def test_detection_config_is_validated(key, value, message):
  cfg = config.defaults()
  config.validate(cfg)
  with cfg.detection.ignore_type():
    cfg.detection[key] = value
  with pytest.raises(UserError, match=message):
    config.validate(cfg)
