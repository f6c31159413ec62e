"""Greedy k-center: against a brute-force numpy greedy, and the lazy vs dense solver."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rodajax import coreset


def brute_greedy(x, k, first):
  """Textbook greedy k-center with the full distance matrix (small inputs only)."""
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  idx = [first]
  mind = d[first].copy()
  for _ in range(k - 1):
    j = int(np.argmax(mind))
    idx.append(j)
    mind = np.minimum(mind, d[j])
  return np.array(idx), mind.max()


@pytest.mark.parametrize("n,d,k", [(300, 8, 30), (1000, 16, 120)])
def test_dense_and_lazy_match_brute_force(n, d, k):
  x = np.random.default_rng(n).normal(size=(n, d)).astype(np.float32)
  want, radius = brute_greedy(x.astype(np.float64), k, 7)
  dense, mind = coreset.greedy_kcenter_dense(jnp.asarray(x), k, jnp.int32(7))
  lazy, mind2 = coreset.greedy_kcenter(jnp.asarray(x), k, 7, batch=8, candidates=64, chunk=128)
  np.testing.assert_array_equal(dense, want)
  np.testing.assert_array_equal(lazy, want)
  assert np.sqrt(float(mind.max())) == pytest.approx(radius, rel=1e-4)
  assert np.sqrt(float(mind2.max())) == pytest.approx(radius, rel=1e-4)
  assert coreset.covering_radius(x, x[np.asarray(lazy)]) == pytest.approx(radius, rel=1e-4)


def test_lazy_handles_clustered_data_and_early_flushes():
  rng = np.random.default_rng(0)
  centres = rng.normal(scale=10, size=(20, 4))
  x = (centres[rng.integers(0, 20, 3000)] + rng.normal(scale=0.3, size=(3000, 4))).astype(np.float32)
  a, _ = coreset.greedy_kcenter_dense(jnp.asarray(x), 200, jnp.int32(0))
  b, _ = coreset.greedy_kcenter(jnp.asarray(x), 200, 0, batch=64, candidates=32, chunk=512)
  assert len(set(np.asarray(b).tolist())) == 200  # no centre twice
  np.testing.assert_allclose(coreset.covering_radius(x, x[np.asarray(b)]),
                             coreset.covering_radius(x, x[np.asarray(a)]), rtol=1e-4)


def test_greedy_radius_is_within_twice_optimal_on_planted_clusters():
  # 5 tight clusters far apart: any 5 centres that hit all clusters are near optimal.
  rng = np.random.default_rng(1)
  c = np.eye(5, 3 * 5)[:, :8] * 100
  x = np.concatenate([ci + rng.normal(scale=0.1, size=(50, 8)) for ci in c]).astype(np.float32)
  idx = np.asarray(coreset.select_coreset(jnp.asarray(x), jax.random.key(0), size=5, proj_dim=None))
  assert sorted(set(i // 50 for i in idx)) == [0, 1, 2, 3, 4]
  assert coreset.covering_radius(x, x[idx]) < 2.0


def test_select_coreset_is_seeded_and_sized():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(500, 32)).astype(np.float32))
  a = coreset.select_coreset(x, jax.random.key(3), ratio=0.1)
  b = coreset.select_coreset(x, jax.random.key(3), ratio=0.1)
  c = coreset.select_coreset(x, jax.random.key(4), ratio=0.1)
  assert a.shape == (50,)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert coreset.select_coreset(x, jax.random.key(0), size=17).shape == (17,)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, None])
def test_bad_ratio_is_a_clear_error(ratio):
  with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
    coreset.coreset_size(100, ratio)
