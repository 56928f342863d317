"""Retrieval recall@K and zero-shot accuracy on hand-made similarities."""
import numpy as np

from imgrec.tasks.image_text import metrics


def test_recall_at_counts_ranks_and_ties():
  sim = np.array([[0.9, 0.1, 0.5],    # match col 0: rank 1
                  [0.8, 0.2, 0.7],    # match col 1: two ahead -> rank 3
                  [0.3, 0.3, 0.3]])   # match col 2 tied with both others: counts as rank 3
  matches = np.eye(3, dtype=bool)
  assert metrics.recall_at(sim, matches, (1, 2, 3)) == {1: 1 / 3, 2: 1 / 3, 3: 1.0}


def test_retrieval_both_ways_with_several_captions_per_image():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(4, 8))
  image_of_text = np.array([0, 0, 1, 2, 3, 3])
  texts = images[image_of_text] + 0.01 * rng.normal(size=(6, 8))  # each caption next to its image
  r = metrics.retrieval(images, texts, image_of_text)
  assert r["i2t_r1"] == 1.0 and r["t2i_r1"] == 1.0
  shuffled = metrics.retrieval(images, texts[[2, 3, 4, 5, 0, 1]], image_of_text)  # captions moved to other images
  assert shuffled["t2i_r1"] == 0.0 and shuffled["i2t_r1"] < 1.0


def test_zero_shot_accuracy_and_confusion():
  logits = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.0, 0.5]])
  r = metrics.zero_shot(logits, np.array([0, 1, 0]), 3)
  assert r["accuracy"] == 2 / 3 and r["top5_accuracy"] == 1.0
  assert r["confusion"].tolist() == [[2, 0, 0], [0, 0, 1], [0, 0, 0]]
