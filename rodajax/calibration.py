"""Image thresholds and score normalisation from calibration scores (numpy, no I/O).

A PatchCore score is a distance in feature units with no fixed scale, so a
saved model carries a threshold calibrated on images whose labels are known:

* `conformal_threshold` (default): held-out normal images only. With n normal
  scores and a target quantile q, the threshold is the k-th smallest score,
  k = ceil((n + 1) q) (split-conformal rule, Vovk et al. 2005; Angelopoulos &
  Bates 2021, Sec. 1.1): a new normal image, exchangeable with the held-out
  ones, exceeds it with probability <= 1 - q. When k > n (too few images for
  q) the largest score is used and the guarantee weakens to 1 / (n + 1).
* `f1_threshold`: labelled validation images; the threshold that maximises F1
  of "anomalous" (as anomalib's F1AdaptiveThreshold), placed midway between
  the two scores it separates.

Decisions are `score > threshold`. `normalise` maps scores so that the median
normal calibration score is 0 and the threshold 0.5 (above 0.5: anomalous;
not clipped, so the ranking is kept).
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import precision_recall_curve


def conformal_threshold(normal_scores: np.ndarray, quantile: float) -> dict:
  """Threshold over held-out normal scores `[n]`; returns {value, rank, n, quantile, note}."""
  s = np.sort(np.asarray(normal_scores, np.float64).reshape(-1))
  n = len(s)
  if n == 0:
    raise ValueError("conformal_threshold needs at least one normal score")
  if not 0.0 < quantile < 1.0:
    raise ValueError(f"quantile must be in (0, 1), got {quantile}")
  if not np.all(np.isfinite(s)):
    raise ValueError("normal scores contain NaN/inf")
  k = math.ceil((n + 1) * quantile)
  note = ""
  if k > n:
    note = (f"{n} calibration images are too few for quantile {quantile} (needs "
            f">= {math.ceil(quantile / (1 - quantile))}); the largest score is used, so a normal "
            f"image exceeds it with probability <= {1 / (n + 1):.3f}")
    k = n
  return {"value": float(s[k - 1]), "rank": k, "n": n, "quantile": quantile, "note": note}


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> dict:
  """F1-optimal threshold for `score > threshold` on labelled scores (1 = anomalous)."""
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if set(np.unique(labels)) != {0, 1}:
    raise ValueError("f1_threshold needs both normal (0) and anomalous (1) images")
  precision, recall, thr = precision_recall_curve(labels, scores)
  f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
  best = int(np.argmax(f1[:-1]))        # the last point (recall 0) has no threshold
  cut = thr[best]                       # sklearn: anomalous iff score >= cut
  below = scores[scores < cut]
  value = float((cut + below.max()) / 2) if len(below) else float(np.nextafter(cut, -np.inf))
  return {"value": value, "f1": float(f1[best]), "n": len(scores),
          "n_anomalous": int(labels.sum())}


def normalise(scores, median: float, threshold: float):
  """0.5 (s - median) / (threshold - median): 0 = median normal, 0.5 = the threshold."""
  scale = threshold - median
  if not scale > 0:
    scale = max(abs(threshold), 1e-12)   # degenerate calibration: keep the decision at 0.5
    return 0.5 + 0.5 * (np.asarray(scores, np.float64) - threshold) / scale
  return 0.5 * (np.asarray(scores, np.float64) - median) / scale
