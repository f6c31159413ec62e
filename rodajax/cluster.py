"""The dominant cluster of the target features (Mejri et al., Eqs. 6-7).

Anomalies are rare, so the largest cluster of the target training features
(in the space of a frozen encoder psi) is taken as the normal set:

  Eq. 6   {C_1..C_K} = KMeans_K(psi(X_t))
  Eq. 7   D = C_k*,  k* = argmax_k |C_k|

K-means is OTT-JAX's (`ott.tools.k_means`, k-means++ init, several restarts),
jit-able. Alternatives from scikit-learn (host, not jit-able): a Gaussian
mixture (largest component by hard assignment) and MeanShift (largest mode).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from ott.tools import k_means

METHODS = ("kmeans", "gmm", "meanshift")


def l2_normalise(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def kmeans_labels(x: jax.Array, k: int, key: jax.Array, n_init: int = 10) -> jax.Array:
  """K-means assignments `[n]` int32 of features `x [n, D]` (OTT, squared Euclidean)."""
  chex.assert_rank(x, 2)
  out = k_means.k_means(x, k, n_init=n_init, rng=key)
  return out.assignment.astype(jnp.int32)


def largest(labels: jax.Array, k: int) -> jax.Array:
  """Boolean mask `[n]` of the most populous label (ties: the smallest label)."""
  counts = jnp.bincount(labels, length=k)
  return labels == jnp.argmax(counts)


def dominant_cluster(x, k: int, key: jax.Array, method: str = "kmeans",
                     normalise: bool = True) -> np.ndarray:
  """Mask `[n]` bool of the dominant cluster of `x [n, D]` (Eqs. 6-7).

  Args:
    k: number of clusters (K-means / GMM components); ignored by MeanShift.
    normalise: cluster L2-normalised features (cosine geometry, as the
      contrastive loss uses).
  """
  x = jnp.asarray(x, jnp.float32)
  if k < 1 or k > x.shape[0]:
    raise ValueError(f"cluster count K={k} must be in 1..{x.shape[0]} (the number of target "
                     "training images); lower uda.clusters")
  if method not in METHODS:
    raise ValueError(f"unknown clustering method {method!r}; known: {', '.join(METHODS)}")
  if normalise:
    x = l2_normalise(x)
  if method == "kmeans":
    return np.asarray(largest(kmeans_labels(x, k, key), k))
  seed = int(jax.random.randint(key, (), 0, 2 ** 31 - 1))
  xn = np.asarray(x, np.float64)
  if method == "gmm":
    from sklearn.mixture import GaussianMixture
    lab = GaussianMixture(k, covariance_type="diag", random_state=seed, reg_covar=1e-4).fit_predict(xn)
  else:
    from sklearn.cluster import MeanShift
    lab = MeanShift().fit_predict(xn)
  counts = np.bincount(lab)
  return lab == np.argmax(counts)
