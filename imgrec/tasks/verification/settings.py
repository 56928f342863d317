"""The verification task's settings: its config section, the data keys it adds, and their checks."""
from imgrec.errors import UserError

NAME = "verification"
# Model selection: the held-out 10-fold accuracy, TAR at FAR 1e-3, or the equal error rate.
SELECT = {"accuracy": "max", "tar_far1e3": "max", "tar_far1e4": "max", "eer": "min"}
DEFAULT_SELECT = "accuracy"
DECODED_SOURCES = ("identities:",)  # decoded on the host: data.pp_train / pp_eval apply
LOSSES = ("arcface", "cosface", "combined", "softmax")
# Keys that only change how a run is evaluated or reported, not what it learns.
MAY_CHANGE = ("verification.calibrate_far", "verification.flip")


def settings():
  """{section: {key: default}}: the `verification` section and the keys it adds to `data`."""
  return {
      NAME: {
          "loss": "arcface",       # arcface | cosface | combined | softmax (plain cross-entropy, the baseline)
          "scale": 64.0,           # s: cosine logits are multiplied by it (insightface: 64)
          "margin": 0.5,           # ArcFace's additive angle m (radians; 0.5) or CosFace's cosine margin (0.35)
          "m1": 1.0,               # combined margin cos(m1*theta + m2) - m3: SphereFace's multiplicative angle,
          "m2": 0.3,               # ArcFace's additive angle
          "m3": 0.2,               # and CosFace's additive cosine (insightface's combined: 1.0, 0.3, 0.2)
          "embedding_dim": 128,    # D: the embedding's size (insightface: 512)
          "dropout": 0.0,          # before the embedding's linear layer (insightface: 0 for big sets, 0.4 small)
          "holdout_fraction": 0.3,  # identities held out of training for the pairs (when no pairs file is given)
          "folds": 10,             # folds of the generated pairs (LFW View 2: 10)
          "pairs_per_fold": 300,   # matched (and as many mismatched) pairs per generated fold (LFW: 300)
          "pairs_seed": 0,         # the fixed draw of held-out identities and pairs
          "pairs": "",             # an LFW-style pairs.txt ("" : pairs drawn from held-out identities)
          "pairs_root": "",        # the identity folders the pairs file names ("": the pairs file's folder)
          "calibrate_far": 1e-3,   # the false-accept rate whose threshold is saved with the run (serving's)
          "flip": True,            # embeddings of an image and its mirror, summed (insightface's eval)
      },
      "data": {
          "glyph_images": 10,      # face_glyphs: images per glyph identity
      },
  }


def validate(cfg):
  """UserErrors for settings that cannot work, before any work."""
  v = cfg[NAME]
  if v.loss not in LOSSES:
    raise UserError(f"verification.loss {v.loss!r} is not one of {', '.join(LOSSES)}")
  if v.scale <= 0:
    raise UserError(f"verification.scale must be positive (64 is usual), got {v.scale}")
  if v.loss in ("arcface", "cosface") and not 0 <= v.margin < 1.5:
    raise UserError(f"verification.margin {v.margin} is out of range: ArcFace's is an angle (0.5), CosFace's a "
                    "cosine (0.35)")
  if v.m1 < 1 or v.m2 < 0 or v.m3 < 0:
    raise UserError(f"the combined margin needs m1 >= 1, m2 >= 0, m3 >= 0; got {v.m1}, {v.m2}, {v.m3}")
  if v.embedding_dim < 1:
    raise UserError(f"verification.embedding_dim must be at least 1, got {v.embedding_dim}")
  if not 0 <= v.dropout < 1:
    raise UserError(f"verification.dropout must be in [0, 1), got {v.dropout}")
  if v.folds < 2 or v.pairs_per_fold < 1:
    raise UserError(f"the pairs protocol needs 2+ folds of 1+ pairs; got {v.folds} folds of {v.pairs_per_fold}")
  if not 0 < v.calibrate_far < 1:
    raise UserError(f"verification.calibrate_far must be a rate in (0, 1), got {v.calibrate_far}")
  if v.pairs_root and not v.pairs:
    raise UserError("verification.pairs_root is set without verification.pairs: name the pairs file too")
