"""Metrics against scikit-learn and hand-computed cases."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rodajax import metrics


def test_auroc_matches_sklearn_and_is_none_for_one_class():
  rng = np.random.default_rng(0)
  y, s = rng.integers(0, 2, 200), rng.random(200)
  assert metrics.auroc(y, s) == pytest.approx(100 * roc_auc_score(y, s))
  assert metrics.auroc(np.zeros(5), np.arange(5)) is None
  with pytest.raises(ValueError, match="NaN"):
    metrics.auroc([0, 1], [0.1, np.nan])


def test_f1_max_hand_case():
  # top 2 anomalous: P=1, R=2/3, F1=.8; top 4 (threshold .2): P=3/4, R=1, F1=6/7 (best)
  assert metrics.f1_max([0, 1, 1, 1, 0], [0.1, 0.9, 0.8, 0.2, 0.3]) == pytest.approx(600 / 7)


def test_aupro_hand_computed():
  # one image, two regions: A (2 px) and B (1 px); 5 normal px.
  masks = np.array([[[1, 1, 0, 0], [0, 0, 0, 1]]], bool)
  maps = np.array([[[0.9, 0.5, 0.1, 0.2], [0.3, 0.4, 0.6, 0.8]]])
  # thresholds descending: 0.9 (A half) -> PRO .25 FPR 0; 0.8 (B) -> PRO .75 FPR 0;
  # 0.6 normal -> FPR .2; 0.5 (A full) -> PRO 1.0 FPR .2; 0.4 -> FPR .4 ...
  # Area from 0 to 0.3: [0, .2] at .75 = .15; [.2, .3] at 1.0 = .1 -> .25 / .3
  assert metrics.aupro(masks, maps, max_fpr=0.3) == pytest.approx(100 * 0.25 / 0.3)


def test_aupro_perfect_and_per_region_not_per_pixel():
  masks = np.zeros((2, 8, 8), bool)
  masks[0, :6, :6] = True   # big region
  masks[1, 0, 0] = True     # tiny region
  perfect = masks.astype(float)
  assert metrics.aupro(masks, perfect) == pytest.approx(100.0)
  half = perfect.copy()
  half[1] = 0.0             # tiny region missed entirely: PRO stays at 0.5
  assert metrics.aupro(masks, half) < 60.0
  # pixel AUROC hardly notices: 36 of 37 anomalous px ranked above all, 1 tied with normals
  assert metrics.pixel_auroc(masks, half) == pytest.approx(100 * 36.5 / 37)


def test_evaluate_per_type_and_masks_subset():
  labels = np.array([0, 0, 1, 1])
  scores = np.array([0.1, 0.2, 0.9, 0.15])
  out = metrics.evaluate(labels, scores, types=["good", "good", "crack", "scratch"])
  assert out["per_type_image_auroc"] == {"crack": 100.0, "scratch": 50.0}
  assert out["pixel_auroc"] is None and out["aupro"] is None


def test_centre_prior_hand_computed():
  # 3x3: the centre is the closest pixel (1), the 4 edges next, the 4 corners farthest.
  centre = np.zeros((1, 3, 3), bool)
  centre[0, 1, 1] = True
  assert metrics.centre_prior(centre)["pixel_auroc"] == 100.0
  corner = np.zeros((1, 3, 3), bool)
  corner[0, 0, 0] = True
  # below the centre and 4 edges (0 each), tied with the 3 other corners (1/2 each): 1.5 / 8
  assert metrics.centre_prior(corner)["pixel_auroc"] == pytest.approx(100 * 1.5 / 8)
  # the same as evaluate() with that map for every image, and has_mask drops images
  both = np.concatenate([corner, centre])
  yy, xx = np.mgrid[:3, :3]
  maps = np.broadcast_to(-((yy - 1.0) ** 2 + (xx - 1.0) ** 2), both.shape)
  ref = metrics.evaluate(np.array([1, 1]), np.zeros(2), both, maps, has_mask=[True, True])
  got = metrics.centre_prior(both, [True, True])
  assert (got["pixel_auroc"], got["aupro"]) == (ref["pixel_auroc"], ref["aupro"])
  assert metrics.centre_prior(both, [False, True])["pixel_auroc"] == 100.0
  assert metrics.centre_prior(None) == {"pixel_auroc": None, "aupro": None}
