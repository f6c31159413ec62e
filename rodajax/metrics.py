"""Detection and segmentation metrics (numpy / scikit-learn; not traced).

All AUROC-type results are returned in percent. A metric that cannot be
measured (a single class present, no masks) is None, never NaN.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score


def _pct(x):
  return None if x is None else float(100.0 * x)


def auroc(labels, scores) -> float | None:
  """Area under the ROC curve in percent, or None if only one class is present."""
  labels, scores = np.asarray(labels).ravel(), np.asarray(scores, np.float64).ravel()
  if labels.size == 0 or len(np.unique(labels)) < 2:
    return None
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contain NaN or inf; the model produced non-finite anomaly scores")
  return _pct(roc_auc_score(labels, scores))


def f1_max(labels, scores) -> float | None:
  """Best F1 over all thresholds, in percent."""
  labels, scores = np.asarray(labels).ravel(), np.asarray(scores, np.float64).ravel()
  if len(np.unique(labels)) < 2:
    return None
  p, r, _ = precision_recall_curve(labels, scores)
  f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
  return _pct(f1.max())


def pixel_auroc(masks, maps) -> float | None:
  """Pixel-level AUROC over all pixels of `masks [N, H, W]` vs `maps [N, H, W]`."""
  if masks is None:
    return None
  return auroc(np.asarray(masks, bool), maps)


def point_regions(points, masks) -> np.ndarray:
  """Defect regions of point clouds: `[N, P]` int, 0 = normal, 1.. = region id (global).

  The 3D counterpart of 8-connectivity: anomalous points of one cloud are
  connected when closer than twice the cloud's median nearest-neighbour
  spacing; each connected component is a region (`aupro(..., regions=)`).
  """
  from scipy.sparse import coo_matrix
  from scipy.sparse.csgraph import connected_components
  from scipy.spatial import cKDTree
  points, masks = np.asarray(points, np.float64), np.asarray(masks, bool)
  out = np.zeros(masks.shape, np.int64)
  n_comp = 0
  for i in range(len(masks)):
    idx = np.flatnonzero(masks[i])
    if not len(idx):
      continue
    spacing = np.median(cKDTree(points[i]).query(points[i], 2)[0][:, 1])
    pairs = cKDTree(points[i][idx]).query_pairs(2 * spacing, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), (len(idx), len(idx)))
    n, lab = connected_components(graph, directed=False)
    out[i, idx] = lab + 1 + n_comp
    n_comp += n
  return out


def aupro(masks, maps, max_fpr: float = 0.3, regions=None) -> float | None:
  """Area under the per-region-overlap curve up to `max_fpr`, normalised, in percent.

  Bergmann et al., MVTec AD (IJCV 2021): regions are the 8-connected components
  of each ground-truth mask; PRO(t) is the mean over regions of the fraction of
  the region's pixels with score >= t; FPR(t) is over normal pixels. The curve
  is integrated (trapezoid) from FPR 0 to `max_fpr` and divided by `max_fpr`.
  Every distinct score is a threshold, so the value is exact.
  `regions`: precomputed region ids (same shape, 0 = normal; point clouds:
  `point_regions`) instead of the 8-connected components of 2D masks.
  """
  if masks is None:
    return None
  masks = np.asarray(masks, bool)
  maps = np.asarray(maps, np.float64)
  if masks.shape != maps.shape:
    raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
  if regions is not None:
    comp = np.where(masks, np.asarray(regions, np.int64), 0)
    ids, inverse = np.unique(comp, return_inverse=True)   # renumbered 1..n_comp
    comp = inverse.reshape(comp.shape) + (0 if ids[0] == 0 else 1)
    n_comp = int(comp.max())
  else:
    comp = np.zeros(masks.shape, np.int64)
    n_comp = 0
    for i in range(len(masks)):
      lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
      comp[i] = np.where(lab > 0, lab + n_comp, 0)
      n_comp += n
  normal = ~masks
  if n_comp == 0 or not normal.any():
    return None
  comp, s = comp.ravel(), maps.ravel()
  sizes = np.bincount(comp, minlength=n_comp + 1).astype(np.float64)
  weight = np.where(comp > 0, 1.0 / (sizes[comp] * n_comp), 0.0)
  order = np.argsort(-s, kind="stable")
  s_sorted = s[order]
  fpr = np.cumsum(normal.ravel()[order]) / normal.sum()
  pro = np.cumsum(weight[order])
  last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # end of each group of tied scores
  fpr, pro = np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]
  keep = fpr <= max_fpr
  x, y = fpr[keep], pro[keep]
  if x[-1] < max_fpr:
    j = np.searchsorted(fpr, max_fpr)
    y_end = pro[j - 1] + (pro[j] - pro[j - 1]) * (max_fpr - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
    x, y = np.r_[x, max_fpr], np.r_[y, y_end]
  return _pct(np.trapezoid(y, x) / max_fpr)


def centre_prior(masks, has_mask=None) -> dict:
  """Pixel AUROC and AUPRO of a map that ignores the image: closeness to its centre.

  `masks [N, H, W]` (and optionally `has_mask [N]`, as `evaluate`). Every image
  gets the same map, minus the squared distance of each pixel to the image
  centre (any map falling off radially gives the same values: both metrics
  depend only on the pixels' order). A reference for the pixel metrics, not a
  detector: where defects sit on a centred object it scores high with no model
  at all (MVTec 3D-AD tire: pixel AUROC about 92), so a method's pixel AUROC
  means little below it. Returns `{"pixel_auroc", "aupro"}` in percent (None
  where not measurable).
  """
  if masks is None:
    return {"pixel_auroc": None, "aupro": None}
  masks = np.asarray(masks, bool)
  if has_mask is not None:
    masks = masks[np.asarray(has_mask, bool)]
  if masks.ndim != 3 or not len(masks):
    return {"pixel_auroc": None, "aupro": None}
  h, w = masks.shape[1:]
  yy, xx = np.mgrid[:h, :w]
  prior = -((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2).astype(np.float64)
  maps = np.broadcast_to(prior, masks.shape)
  return {"pixel_auroc": pixel_auroc(masks, maps), "aupro": aupro(masks, maps)}


def evaluate(labels, scores, masks=None, maps=None, types: Sequence[str] | None = None,
             has_mask=None, regions=None) -> dict:
  """Image AUROC, F1-max, pixel AUROC, AUPRO, overall and per defect type.

  Pixel metrics use only images that have a ground-truth mask (`has_mask`).
  """
  labels = np.asarray(labels)
  scores = np.asarray(scores)
  if masks is not None and has_mask is not None:
    keep = np.asarray(has_mask, bool)
    masks, maps = (None, None) if not keep.any() else (np.asarray(masks)[keep], np.asarray(maps)[keep])
    regions = None if regions is None or masks is None else np.asarray(regions)[keep]
  out = {"image_auroc": auroc(labels, scores), "image_f1_max": f1_max(labels, scores),
         "pixel_auroc": pixel_auroc(masks, maps) if maps is not None else None,
         "aupro": aupro(masks, maps, regions=regions) if maps is not None else None}
  if types is not None:
    types = np.asarray(types)
    per = {}
    for t in sorted(set(types[labels == 1])):
      sel = (types == t) | (labels == 0)
      per[str(t)] = auroc(labels[sel], scores[sel])
    out["per_type_image_auroc"] = per
  return out
