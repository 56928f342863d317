"""Face verification: ArcFace on CASIA-WebFace, judged on LFW's View 2 pairs. NOT measured here (no data, no GPU).

  imgrec train --config configs/face_casia_lfw.py --workdir runs/casia_lfw \\
      --config.data.source=identities:/data/casia-webface --config.verification.pairs=/data/lfw/pairs.txt \\
      --config.verification.pairs_root=/data/lfw/lfw

Data: CASIA-WebFace as identity folders (DIR/IDENTITY/*.jpg; 10,575 identities, ~494k images), aligned and
cropped to 112x112 as insightface's release is (imgrec does no face detection or alignment); LFW in its own
layout (lfw/NAME/NAME_0001.jpg) aligned the same way, with the official pairs.txt (View 2: 10 folds of 300
matched + 300 mismatched). insightface's lfw.bin is a pickle and is refused: use the images and pairs.txt. CASIA
and LFW share no identities by design, so every CASIA identity is trained on.

Published reference (Deng et al., "ArcFace", CVPR 2019, Table 2): ResNet50 trained on CASIA-WebFace with ArcFace
(m = 0.5, s = 64): LFW 99.53%. insightface's network is its IResNet50 (a 112x112 stem, BN-dropout-FC-BN output);
this recipe uses the zoo's resnet50 with the same embedding head, so expect a figure near, not equal to, that one.
"""
from imgrec.config import defaults


def get_config(arg=None):
  del arg
  c = defaults()
  c.task = "verification"
  c.data.source = "identities:/data/casia-webface"
  c.data.pp_train = "decode|flip|resize(112)"  # faces are mirror-symmetric; aligned crops keep their framing
  c.data.pp_eval = "decode|resize(112)"
  c.model.name = "resnet50"
  c.verification.pairs = "/data/lfw/pairs.txt"
  c.verification.pairs_root = "/data/lfw/lfw"
  c.verification.loss = "arcface"
  c.verification.scale = 64.0
  c.verification.margin = 0.5
  c.verification.embedding_dim = 512
  c.verification.dropout = 0.4  # insightface's setting for small training sets such as CASIA
  c.verification.flip = True
  c.batch_size = 512
  c.epochs = 32.0
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "step"
  c.optim.decay_epochs = (20.0, 28.0)
  c.optim.warmup_epochs = 1.0
  c.select_metric = "accuracy"
  c.eval_every = 2000
  c.log_every = 100
  return c
