"""The dominant cluster of the target features (Mejri et al., Eqs. 6-7).

Anomalies are rare, so the largest cluster of the target training features
(in the space of a frozen encoder psi) is taken as the normal set:

  Eq. 6   {C_1..C_K} = KMeans_K(psi(X_t))
  Eq. 7   D = C_k*,  k* = argmax_k |C_k|

Negatives for the contrastive loss (Eq. 8) are the target samples outside D
(as written) or, `far_from`, only the m samples outside D farthest from D's
mean: "outside D" is mostly normal when K > 2 (anomalies are rare, so the
other clusters are normal images too), the far tail is where anomalies sit.

K-means is OTT-JAX's (`ott.tools.k_means`, k-means++ init, several restarts),
jit-able. Alternatives from scikit-learn (host, not jit-able): a Gaussian
mixture (largest component by hard assignment) and MeanShift (largest mode).
Beyond the paper, `trimmed`: trimmed K-means with K = 1 (Cuesta-Albertos,
Gordaliza and Matran, Ann. Statist. 1997): D = the (1 - alpha) n samples
nearest to D's own mean, a robust "everything but the far tail" that needs no
K and does not split the normal class into appearance modes.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from ott.tools import k_means

METHODS = ("kmeans", "gmm", "meanshift", "trimmed")
NEGATIVES = ("outside", "far")   # contrastive negatives: every sample outside D | `far_from`


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


@functools.partial(jax.jit, static_argnames=("keep", "iterations"))
def trimmed_mean_mask(x: jax.Array, keep: int, iterations: int = 20) -> jax.Array:
  """Trimmed K-means with K = 1: mask `[n]` bool of the `keep` samples of `x [n, D]`
  nearest to the mean of those same samples.

  Concentration steps from the mean of all samples: keep the `keep` nearest to the
  current centre (squared Euclidean; ties by index), move the centre to their mean.
  Each step does not increase the trimmed within-cluster sum of squares, so the
  mask settles at a fixed point; `iterations` steps bound the loop (jit-able).
  """
  x = jnp.asarray(x, jnp.float32)
  chex.assert_rank(x, 2)
  n = x.shape[0]
  if not 1 <= keep <= n:
    raise ValueError(f"keep={keep} samples must be in 1..{n}")

  def mask_of(centre):
    d = jnp.sum((x - centre) ** 2, axis=-1)
    return jnp.zeros(n, bool).at[jnp.argsort(d, stable=True)[:keep]].set(True)

  def step(_, centre):
    m = mask_of(centre)
    return (m.astype(x.dtype) @ x) / keep

  centre = jax.lax.fori_loop(0, iterations, step, jnp.mean(x, axis=0))
  return mask_of(centre)


def dominant_cluster(x, k: int, key: jax.Array, method: str = "kmeans",
                     normalise: bool = True, trim: float = 0.2) -> np.ndarray:
  """Mask `[n]` bool of the dominant cluster of `x [n, D]` (Eqs. 6-7).

  Args:
    k: number of clusters (K-means / GMM components); ignored by MeanShift and
      trimmed.
    normalise: cluster L2-normalised features (cosine geometry, as the
      contrastive loss uses).
    trim: share alpha of the samples the `trimmed` method leaves out of D (the far
      tail; D keeps round((1 - alpha) n), at least 1).
  """
  x = jnp.asarray(x, jnp.float32)
  if k < 1 or k > x.shape[0]:
    raise ValueError(f"cluster count K={k} must be in 1..{x.shape[0]} (the number of target "
                     "training images); lower uda.clusters")
  if method not in METHODS:
    raise ValueError(f"unknown clustering method {method!r}; known: {', '.join(METHODS)}")
  if not 0.0 <= trim < 1.0:
    raise ValueError(f"trim share {trim} must be in [0, 1); it is the share of the target "
                     "set left out of D (uda.trim_share)")
  if normalise:
    x = l2_normalise(x)
  if method == "trimmed":
    keep = max(1, int(round((1.0 - trim) * x.shape[0])))
    return np.asarray(trimmed_mean_mask(x, keep))
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


def far_from(x, dominant, m: int, normalise: bool = True) -> np.ndarray:
  """Mask `[n]` bool of the `m` samples outside D farthest from D's mean.

  Distances are Euclidean on L2-normalised `x [n, D]` (the geometry
  `dominant_cluster` clusters in); `dominant [n]` bool is D. Fewer than `m`
  are returned when fewer lie outside D; none when D is empty.
  """
  x = jnp.asarray(x, jnp.float32)
  chex.assert_rank(x, 2)
  dominant = np.asarray(dominant, bool)
  chex.assert_shape(dominant, (x.shape[0],))
  if m < 0:
    raise ValueError(f"negative count m={m} must be >= 0")
  out = np.zeros(x.shape[0], bool)
  rest = np.flatnonzero(~dominant)
  if not dominant.any() or m == 0 or len(rest) == 0:
    return out
  if normalise:
    x = l2_normalise(x)
  centre = jnp.mean(x[np.flatnonzero(dominant)], axis=0)
  d = np.asarray(jnp.sum((x[rest] - centre) ** 2, axis=-1))
  out[rest[np.argsort(-d, kind="stable")[:m]]] = True
  return out
