"""The verification report's figures: the ROC curve (log FAR axis, the calibrated operating point marked) and the
genuine / impostor score histograms with the chosen thresholds. matplotlib's object API, via imgrec/plots.py."""
import numpy as np

from imgrec import plots
from imgrec.tasks.verification import protocol


def plot_roc(scores, same, path, summary=None):
  """TAR against FAR on a log FAR axis; with `summary` (protocol.summary) the TAR at each FAR of the record."""
  far, tar, _ = protocol.roc(scores, same)
  fig, ax = plots.subplots(figsize=(5.5, 4.5))
  floor = 0.5 / max(1, int((~np.asarray(same, bool)).sum()))  # FAR 0 drawn half a pair below the resolution
  ax.plot(np.maximum(far, floor), tar, lw=1.5, label="ROC")
  if summary:
    for tag, rate in protocol.FARS.items():
      ax.plot([rate], [summary[f"tar_far{tag}"]], "o", label=f"TAR {summary[f'tar_far{tag}']:.3f} at FAR {rate:g}")
    ax.set_title(f"ROC: 10-fold accuracy {summary['accuracy']:.4f}, EER {summary['eer']:.4f}")
  ax.set(xscale="log", xlabel="false accept rate", ylabel="true accept rate", ylim=(0, 1.01))
  ax.grid(alpha=0.3, which="both")
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_histogram(scores, same, path, summary=None):
  """Genuine and impostor cosine-score histograms (densities), the 10-fold and calibrated thresholds marked."""
  scores, same = np.asarray(scores), np.asarray(same, bool)
  fig, ax = plots.subplots(figsize=(6, 4))
  bins = np.linspace(min(-0.2, scores.min()), 1.0, 61)
  ax.hist(scores[same], bins, alpha=0.6, density=True, label=f"genuine ({same.sum()})", color="tab:green")
  ax.hist(scores[~same], bins, alpha=0.6, density=True, label=f"impostor ({(~same).sum()})", color="tab:red")
  if summary:
    ax.axvline(np.mean(summary["thresholds"]), color="k", ls="--", lw=1, label="10-fold threshold (mean)")
    ax.axvline(summary["threshold"], color="tab:blue", ls=":", lw=1.5,
               label=f"calibrated at FAR {summary['threshold_far']:g}")
  ax.set(xlabel="cosine score", ylabel="density", title="Pair scores")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
