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


def test_transfer_threshold_by_hand():
  src = np.array([1.0, 2, 3, 4, 5])                # quartile 2, median 3
  tgt = 10.0 + 2.0 * src                           # quartile 14, median 16
  t = calibration.transfer_threshold(src, tgt, 5.0, rule="affine")
  assert (t["a"], t["b"], t["value"]) == (10.0, 2.0, 20.0)   # the threshold maps as the scores
  assert calibration.transfer_threshold(src, tgt, 5.0, rule="shift")["value"] == 18.0  # 5 + 13
  assert calibration.transfer_threshold(src, tgt, 5.0, rule="scale")["value"] == pytest.approx(
      5.0 * 16 / 3)


def test_transfer_threshold_ignores_a_minority_of_high_scoring_anomalies():
  # Normal target scores = 3 + 1.5 x source's distribution; 10% anomalies far above. With the
  # share given, the quantiles below the anomalies recover the map; with 0 they are biased up.
  rng = np.random.default_rng(0)
  src, nrm = rng.gamma(4.0, 1.0, 4000), rng.gamma(4.0, 1.0, 4000)
  thr = np.quantile(src, 0.99)
  tgt = np.concatenate([3.0 + 1.5 * nrm, 50.0 + rng.random(444)])   # 444 / 4444 = 10%
  truth = 3.0 + 1.5 * thr
  good = calibration.transfer_threshold(src, tgt, thr, anomaly_share=0.1)["value"]
  naive = calibration.transfer_threshold(src, tgt, thr, anomaly_share=0.0)["value"]
  assert abs(good - truth) < 0.03 * truth
  assert naive > good
  # The conformal threshold's promise carries over: ~1% of fresh target normals above it.
  assert np.mean(3.0 + 1.5 * rng.gamma(4.0, 1.0, 20000) > good) == pytest.approx(0.01, abs=0.006)


def test_transfer_threshold_refuses_bad_input():
  s = np.arange(1.0, 6.0)
  with pytest.raises(ValueError, match="half or more"):
    calibration.transfer_threshold(s, s, 5.0, anomaly_share=0.5)
  with pytest.raises(ValueError, match="NaN"):
    calibration.transfer_threshold(s, np.array([1.0, np.nan]), 5.0)
  with pytest.raises(ValueError, match="rule"):
    calibration.transfer_threshold(s, s, 5.0, rule="median")
  with pytest.raises(ValueError, match=">= 2"):
    calibration.transfer_threshold(s, s[:1], 5.0)
