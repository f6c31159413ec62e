"""Thresholds and normalisation, checked against hand-computed cases."""
import numpy as np
import pytest

from rodajax import calibration


def test_conformal_rank_by_hand():
  s = np.array([5.0, 1, 9, 3, 7, 2, 10, 4, 8, 6])     # 1..10 shuffled
  t = calibration.conformal_threshold(s, 0.8)        # k = ceil(11 * 0.8) = 9
  assert (t["value"], t["rank"], t["n"], t["note"]) == (9.0, 9, 10, "")
  t = calibration.conformal_threshold(s, 0.5)        # k = ceil(5.5) = 6
  assert t["value"] == 6.0


def test_conformal_with_too_few_images_uses_the_max_and_says_so():
  t = calibration.conformal_threshold(np.arange(1.0, 11.0), 0.99)   # k = 11 > 10
  assert t["value"] == 10.0 and "too few" in t["note"] and "0.091" in t["note"]


def test_conformal_coverage_on_exchangeable_scores():
  # Over many draws, a fresh normal score exceeds the threshold at most 1 - q of the time.
  rng = np.random.default_rng(0)
  exceed = [rng.normal() > calibration.conformal_threshold(rng.normal(size=39), 0.9)["value"]
            for _ in range(4000)]
  assert np.mean(exceed) <= 0.1 + 0.015


def test_f1_threshold_by_hand():
  labels = np.array([0, 0, 0, 1, 0, 1, 1])
  scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
  # Cut at >= 0.4: tp 3, fp 1, fn 0 -> F1 6/7, the best; midway to 0.3 below.
  t = calibration.f1_threshold(labels, scores)
  assert t["value"] == pytest.approx(0.35) and t["f1"] == pytest.approx(6 / 7)
  assert np.sum((scores > t["value"]) & (labels == 1)) == 3


def test_f1_needs_both_classes_and_conformal_refuses_nan():
  with pytest.raises(ValueError, match="both"):
    calibration.f1_threshold(np.zeros(3), np.arange(3.0))
  with pytest.raises(ValueError, match="NaN"):
    calibration.conformal_threshold(np.array([1.0, np.nan]), 0.9)


def test_normalise_maps_median_to_0_and_threshold_to_half():
  np.testing.assert_allclose(calibration.normalise([2.0, 4.0, 6.0], 2.0, 4.0), [0.0, 0.5, 1.0])
  # Degenerate calibration (threshold == median): the decision stays at 0.5.
  assert calibration.normalise([3.0], 3.0, 3.0)[0] == 0.5
