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

* `transfer_threshold`: no labels in the new conditions. After a drift (and
  adaptation) the normal scores move; the fitted threshold is carried over by
  matching the lower quantiles of the source's held-out normal scores to those
  of the unlabeled target images (assumed mostly normal, anomalies scoring
  above the normals), a location-scale map of the score axis.

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


TRANSFER_RULES = ("shift", "scale", "affine")


def transfer_threshold(source_normal: np.ndarray, target: np.ndarray, threshold: float,
                       anomaly_share: float = 0.0, rule: str = "affine",
                       quantiles: tuple[float, float] = (0.25, 0.5)) -> dict:
  """The fitted `threshold` carried to new conditions from unlabeled target scores.

  Model: a target normal image's score is `a + b * s` for a source normal score s
  (the drift and the adaptation move and stretch the score axis, the ranking of
  normal images' scores is kept). With anomalies making up at most
  `anomaly_share` = eps of `target [m]` and scoring above the normals, the
  normals' p-quantile is the target's p (1 - eps)-quantile, so a and b come
  from the quantiles `p1 < p2` (default: lower quartile, median) of
  `source_normal [n]` and of `target`, below the anomalies' reach:

    shift:  b = 1,                a = Qt(p2') - Qs(p2)
    scale:  a = 0,                b = Qt(p2') / Qs(p2)       (scores are distances >= 0)
    affine: b = (Qt(p2') - Qt(p1')) / (Qs(p2) - Qs(p1)),   a = Qt(p2') - b Qs(p2)

  with p' = p (1 - eps). Returns {value = a + b * threshold, a, b, rule, n_source,
  n_target, anomaly_share}. A label-free estimate: it fails when most target
  images are anomalous or when anomalies score among the normals.
  """
  src = np.asarray(source_normal, np.float64).reshape(-1)
  tgt = np.asarray(target, np.float64).reshape(-1)
  if rule not in TRANSFER_RULES:
    raise ValueError(f"rule must be one of {TRANSFER_RULES}, got {rule!r}")
  if not 0.0 <= anomaly_share < 0.5:
    raise ValueError(f"anomaly_share must be in [0, 0.5), got {anomaly_share}: with half or "
                     "more of the target images anomalous their scores say nothing about the "
                     "normal ones; recalibrate on known-normal images instead")
  p1, p2 = quantiles
  if not 0.0 < p1 < p2 <= 0.5:
    raise ValueError(f"quantiles must satisfy 0 < p1 < p2 <= 0.5, got {quantiles}")
  if len(src) < 2 or len(tgt) < 2:
    raise ValueError(f"transfer_threshold needs >= 2 source and target scores, got "
                     f"{len(src)} and {len(tgt)}")
  if not (np.all(np.isfinite(src)) and np.all(np.isfinite(tgt)) and np.isfinite(threshold)):
    raise ValueError("scores or threshold contain NaN/inf")
  keep = 1.0 - anomaly_share
  s1, s2 = np.quantile(src, [p1, p2])
  t1, t2 = np.quantile(tgt, [p1 * keep, p2 * keep])
  if rule == "shift":
    a, b = t2 - s2, 1.0
  elif rule == "scale":
    if not s2 > 0:
      raise ValueError("rule 'scale' needs a positive source median score")
    a, b = 0.0, t2 / s2
  else:
    if not s2 > s1:
      raise ValueError("rule 'affine' needs source quantiles that differ (all scores equal?)")
    b = max((t2 - t1) / (s2 - s1), 0.0)
    a = t2 - b * s2
  return {"value": float(a + b * threshold), "a": float(a), "b": float(b), "rule": rule,
          "n_source": len(src), "n_target": len(tgt), "anomaly_share": anomaly_share,
          "quantiles": [p1, p2]}
