"""Nearest-neighbour scoring and anomaly maps against numpy / scipy."""
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from rodajax import scoring


def test_nearest_neighbours_match_numpy_with_ragged_chunks():
  rng = np.random.default_rng(0)
  q, m = rng.normal(size=(1037, 24)), rng.normal(size=(211, 24))
  d = np.sqrt(((q[:, None] - m[None]) ** 2).sum(-1))
  dist, idx = scoring.nearest_neighbours(jnp.asarray(q, jnp.float32), jnp.asarray(m, jnp.float32), chunk=100)
  np.testing.assert_allclose(dist, d.min(1), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(idx, d.argmin(1))


def test_image_score_is_max_patch_distance():
  s = jnp.asarray(np.random.default_rng(1).random((3, 4, 5)), jnp.float32)
  np.testing.assert_allclose(scoring.image_scores(s), np.asarray(s).reshape(3, -1).max(1))


def test_gaussian_blur_matches_scipy_reflect():
  x = np.random.default_rng(2).random((2, 40, 33)).astype(np.float32)
  want = np.stack([ndimage.gaussian_filter(a, sigma=4, mode="reflect") for a in x])
  np.testing.assert_allclose(scoring.gaussian_blur(jnp.asarray(x), 4.0), want, atol=1e-5)


def test_anomaly_map_upsamples_and_peaks_at_the_hot_patch():
  s = np.zeros((1, 28, 28), np.float32)
  s[0, 20, 6] = 5.0
  m = np.asarray(scoring.anomaly_maps(jnp.asarray(s), 224, 4.0))
  assert m.shape == (1, 224, 224)
  y, x = np.unravel_index(m[0].argmax(), (224, 224))
  assert abs(y - (20 * 8 + 3.5)) <= 4 and abs(x - (6 * 8 + 3.5)) <= 4


def test_reweighting_matches_hand_computation():
  bank = jnp.asarray([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [0.0, 9.0]])
  feats = jnp.asarray([[[[0.0, 2.0], [0.1, 0.0]]]])  # B=1, h=1, w=2
  s, idx = scoring.patch_scores(feats, bank)
  got = float(scoring.reweighted_image_scores(feats, s, idx, bank, neighbours=2)[0])
  # worst patch (0,2) -> m* = (0,0), N_2(m*) = {(0,0), (1,0)}
  d_star, d_nb = 2.0, np.array([2.0, np.sqrt(5.0)])
  assert got == pytest.approx((1 - np.exp(d_star) / np.exp(d_nb).sum()) * d_star, rel=1e-5)


def test_nearest_distances_match_the_indexed_search_and_brute_force():
  rng = np.random.default_rng(3)
  q, m = rng.normal(size=(300, 24)).astype(np.float32), rng.normal(size=(500, 24)).astype(np.float32)
  brute = np.sqrt(((q[:, None].astype(np.float64) - m[None]) ** 2).sum(-1)).min(1)
  fast = np.asarray(scoring.nearest_distances(jnp.asarray(q), jnp.asarray(m), chunk=128))
  slow = np.asarray(scoring.nearest_neighbours(jnp.asarray(q), jnp.asarray(m), chunk=128)[0])
  np.testing.assert_allclose(fast, brute, rtol=1e-4)
  np.testing.assert_allclose(fast, slow, rtol=1e-5)
  feats = jnp.asarray(rng.normal(size=(2, 5, 5, 24)).astype(np.float32))
  np.testing.assert_allclose(scoring.patch_distances(feats, jnp.asarray(m)),
                             scoring.patch_scores(feats, jnp.asarray(m))[0], rtol=1e-5)
