"""Distribution-alignment losses on feature sets (baselines of RoDA, UDA losses).

All take features `[N, D]` and return a scalar; statistics of the source are
passed explicitly (saved at fit time with the memory bank).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def mean_cov(z: jax.Array):
  """Mean `[D]` and unbiased covariance `[D, D]` of `z [N, D]`."""
  chex.assert_rank(z, 2)
  mu = jnp.mean(z, axis=0)
  zc = z - mu
  return mu, zc.T @ zc / jnp.maximum(z.shape[0] - 1, 1)


def moment_matching(z: jax.Array, mu_s: jax.Array, cov_s: jax.Array) -> jax.Array:
  """TTT++ (Liu et al. 2021): ||mu_s - mu_t||^2 + ||Sigma_s - Sigma_t||_F^2."""
  mu_t, cov_t = mean_cov(z)
  return jnp.sum((mu_s - mu_t) ** 2) + jnp.sum((cov_s - cov_t) ** 2)


def gaussian_kl(z: jax.Array, mu_s: jax.Array, cov_s: jax.Array, reg: float = 1e-3) -> jax.Array:
  """KL(N_t || N_s) of Gaussians fitted to the target and source (TTAC, Su et al. 2022).

  0.5 [tr(S_s^-1 S_t) + (mu_s - mu_t)^T S_s^-1 (mu_s - mu_t) - D + ln|S_s| - ln|S_t|],
  both covariances regularised by `reg * mean(diag) * I`.
  """
  d = z.shape[1]
  mu_t, cov_t = mean_cov(z)
  eye = jnp.eye(d)
  cov_s = cov_s + reg * jnp.mean(jnp.diag(cov_s)) * eye
  cov_t = cov_t + reg * jnp.mean(jnp.diag(cov_t)) * eye
  ls = jnp.linalg.cholesky(cov_s)
  lt = jnp.linalg.cholesky(cov_t)
  a = jax.scipy.linalg.solve_triangular(ls, lt, lower=True)
  dm = jax.scipy.linalg.solve_triangular(ls, mu_s - mu_t, lower=True)
  logdet = 2 * (jnp.sum(jnp.log(jnp.diag(ls))) - jnp.sum(jnp.log(jnp.diag(lt))))
  return 0.5 * (jnp.sum(a * a) + jnp.sum(dm * dm) - d + logdet)


def mmd(x: jax.Array, y: jax.Array, bandwidths=(0.5, 1.0, 2.0, 4.0, 8.0)) -> jax.Array:
  """Squared MMD with a sum of Gaussian kernels; bandwidths relative to the median distance.

  Biased V-statistic (Gretton et al. 2012); `bandwidths` scale sigma^2 = b * median d^2.
  """
  xy = jnp.concatenate([x, y])
  sq = jnp.sum(xy * xy, -1)
  d2 = jnp.maximum(sq[:, None] - 2 * xy @ xy.T + sq[None], 0.0)
  med = jax.lax.stop_gradient(jnp.median(d2) + 1e-12)
  k = sum(jnp.exp(-d2 / (b * med)) for b in bandwidths)
  n = x.shape[0]
  return jnp.mean(k[:n, :n]) + jnp.mean(k[n:, n:]) - 2 * jnp.mean(k[:n, n:])
