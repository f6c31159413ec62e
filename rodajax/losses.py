"""Distribution-alignment losses on feature sets (baselines of RoDA, UDA losses).

All take features `[N, D]` and return a scalar; statistics of the source are
passed explicitly (saved at fit time with the memory bank).
"""
from __future__ import annotations

import functools

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


def mmd(x: jax.Array, y: jax.Array, bandwidths=(0.5, 1.0, 2.0, 4.0, 8.0),
        y_weights: jax.Array | None = None) -> jax.Array:
  """Squared MMD with a sum of Gaussian kernels; bandwidths relative to the median distance.

  Biased V-statistic (Gretton et al. 2012); `bandwidths` scale sigma^2 = b * median d^2.
  `y_weights [m]` (>= 0) weight the target samples (e.g. 1 inside the dominant
  cluster, 0 outside), so a fixed-size batch can hold a variable subset.
  """
  chex.assert_rank([x, y], 2)
  wy = jnp.ones(y.shape[0]) if y_weights is None else y_weights
  wy = wy / jnp.maximum(jnp.sum(wy), 1e-12)
  wx = jnp.full(x.shape[0], 1.0 / x.shape[0])
  xy = jnp.concatenate([x, y])
  sq = jnp.sum(xy * xy, -1)
  d2 = jnp.maximum(sq[:, None] - 2 * xy @ xy.T + sq[None], 0.0)
  med = jax.lax.stop_gradient(jnp.median(d2) + 1e-12)
  k = sum(jnp.exp(-d2 / (b * med)) for b in bandwidths)
  n = x.shape[0]
  return wx @ k[:n, :n] @ wx + wy @ k[n:, n:] @ wy - 2 * wx @ k[:n, n:] @ wy


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """`[n, m]` cosine similarities of `a [n, D]` and `b [m, D]`."""
  an = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)
  bn = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), eps)
  return an @ bn.T


DENOMINATORS = ("negatives", "infonce")


def contrastive_alignment(zs: jax.Array, zt: jax.Array, dominant: jax.Array,
                          tau: float = 0.1, denominator: str = "negatives") -> jax.Array:
  """Contrastive alignment of source normals with the target's dominant cluster
  (Mejri et al., Eqs. 8-9):

    l(x_s, x_t+) = -log [ exp(sim(f(x_s), f(x_t+)) / tau) / den ]
    L_UDA = mean over source samples x_s and dominant-cluster samples x_t+,

  with sim the cosine similarity and, by `denominator`:
    "negatives" (the paper as written): den = sum_{x_t- not in D} exp(sim(x_s, x_t-) / tau).
        The positive is not in it, so the loss is bounded below by -2/tau + ln M
        (M negatives), not by 0, and it saturates there: -17.2 at tau 0.1, M 16.
    "infonce": den = exp(sim(x_s, x_t+) / tau) + the sum above (van den Oord
        et al. 2018): l >= 0, -> 0 when x_s is nearer x_t+ than every negative.

  Args:
    zs: `[n_s, D]` source features; zt: `[n_t, D]` target features.
    dominant: `[n_t]` bool, membership in D. Returns 0 when D is empty; when D
      holds every target sample the negatives are all target samples.
  """
  chex.assert_rank([zs, zt], 2)
  chex.assert_shape(dominant, (zt.shape[0],))
  if denominator not in DENOMINATORS:
    raise ValueError(f"unknown contrastive denominator {denominator!r}; known: "
                     f"{', '.join(DENOMINATORS)}")
  s = cosine_similarity(zs, zt) / tau                          # [n_s, n_t]
  n_pos = jnp.sum(dominant)
  # No sample outside D (the "align all target" ablation): the negatives
  # fall back to every target sample.
  neg_mask = jnp.where(n_pos < zt.shape[0], ~dominant, True)
  log_neg = jax.scipy.special.logsumexp(jnp.where(neg_mask[None], s, -jnp.inf), axis=1,
                                        keepdims=True)       # [n_s, 1]
  if denominator == "infonce":   # the positive joins the negatives (once: when D is every
    log_den = jnp.where(n_pos < zt.shape[0], jnp.logaddexp(log_neg, s), log_neg)  # sample, it is in)
  else:
    log_den = log_neg
  per_pair = log_den - s                                       # -log(exp(s) / den)
  val = jnp.sum(jnp.where(dominant[None], per_pair, 0.0)) / jnp.maximum(n_pos * zs.shape[0], 1)
  return jnp.where(n_pos > 0, val, 0.0)


def svdd_loss(z: jax.Array, centre: jax.Array) -> jax.Array:
  """One-class Deep SVDD (Ruff et al. 2018; Mejri et al. Eq. 5): mean ||f(x) - mu||^2."""
  chex.assert_rank(z, 2)
  return jnp.mean(jnp.sum((z - centre) ** 2, axis=-1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gradient_reversal(x: jax.Array, scale: float = 1.0) -> jax.Array:
  """Identity forward; backward multiplies the gradient by -scale (Ganin & Lempitsky 2015)."""
  return x


def _grl_fwd(x, scale):
  return x, None


def _grl_bwd(scale, _, g):
  return (-scale * g,)


gradient_reversal.defvjp(_grl_fwd, _grl_bwd)
