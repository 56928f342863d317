"""Classification's settings: its keys in the full schema (imgrec.config.defaults()), their checks, and which of
them may change when a run resumes. Read by imgrec/config.py and imgrec/resume.py through imgrec/tasks."""
from imgrec.errors import UserError

NAME = "classification"
SELECT = {"accuracy": "max", "loss": "min"}  # what model selection may maximise / minimise
DEFAULT_SELECT = "accuracy"
DECODED_SOURCES = ("folder:", "tfds:")  # sources whose images are decoded on the host (data.pp_* apply)


def settings():
  """{section: {key: default}}: the keys this task adds to the schema."""
  return {
      "data": {
          "classes": (),  # keep only these class indices, relabelled 0..k-1 in this order (): all
          "train_per_class": 0,  # k-shot: keep N training examples per class (fixed draw); 0: all
      },
      "classification": {
          "tta": False,  # evaluation: average the softmax over each image and its horizontal mirror (imgrec eval --tta)
      },
      # knowledge distillation (tasks/classification/losses.distillation, in the train step)
      "distill": {
          "teacher": "",  # teacher workdir ("": off); same data and classes as this run
          "alpha": 0.5,  # loss = alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)
          "temperature": 4.0,
      },
  }


MAY_CHANGE = ("classification.tta",)  # how evaluations are computed, not what was trained


def validate(cfg):
  d = cfg.distill
  if not 0 <= d.alpha <= 1 or d.temperature <= 0:
    raise UserError(f"distill.alpha must be in [0, 1] and distill.temperature > 0, got {d.alpha}, {d.temperature}")
