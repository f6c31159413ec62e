"""Greedy k-center coreset selection (PatchCore, Roth et al. 2022, Eq. 1 / Alg. 1).

    M_C = argmax_{m in M \\ M_C}  min_{n in M_C} ||psi(m) - psi(n)||_2,

grown one centre at a time from a seeded random first centre, where psi is a
seeded Gaussian random projection (default 128 dims; Johnson-Lindenstrauss
keeps the distances). Memory is O(N): never an N x N matrix, only the current
min-distance of each point.

Two exact implementations (the same selections up to exact ties):
  * `greedy_kcenter_dense`: every step updates all N min-distances (the plain
    algorithm, O(N k d)).
  * `greedy_kcenter` (default): lazy and batched. Pending centres are applied to
    all N points by one matmul every `batch` steps; in between, the next centre
    is chosen among the `candidates` points of largest (stale) min-distance,
    whose exact values are kept current, and a flush happens early whenever an
    outsider could win. Dense matmuls run at many times the speed of the plain
    algorithm's matrix-vector products on CPU (benchmarks/README.md).
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def coreset_size(n: int, ratio: float | None = None, size: int | None = None) -> int:
  """Number of centres for `n` points from a ratio in (0, 1] or an absolute size."""
  if size is not None:
    if size < 1:
      raise ValueError(f"coreset size must be >= 1, got {size}")
    return int(min(size, n))
  if ratio is None or not (0.0 < float(ratio) <= 1.0):
    raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}; e.g. 0.1 keeps 10% of patches")
  return max(1, int(round(n * float(ratio))))


def random_projection(key: jax.Array, dim_in: int, dim_out: int) -> jax.Array:
  """Gaussian projection matrix `[dim_in, dim_out]`, entries N(0, 1/dim_out)."""
  return jax.random.normal(key, (dim_in, dim_out), jnp.float32) / jnp.sqrt(dim_out)


def project(features: jax.Array, key: jax.Array, dim: int | None) -> jax.Array:
  """`[N, D]` -> `[N, dim]` (no projection when dim is None or >= D)."""
  if dim is None or dim >= features.shape[-1]:
    return features.astype(jnp.float32)
  return features.astype(jnp.float32) @ random_projection(key, features.shape[-1], dim)


def _sqdist_to(z, sq, c):
  return jnp.maximum(sq - 2.0 * (z @ c) + jnp.dot(c, c), 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def greedy_kcenter_dense(z: jax.Array, k: int, first: jax.Array):
  """Plain greedy k-center on `z [N, d]`.

  Returns:
    `(indices [k] int32, min_sqdist [N])`: the centres in selection order
    (indices[0] = first) and every point's squared distance to its nearest centre.
  """
  chex.assert_rank(z, 2)
  sq = jnp.sum(z * z, axis=-1)

  def body(i, st):
    mind, idx = st
    mind = jnp.minimum(mind, _sqdist_to(z, sq, z[idx[i - 1]]))
    return mind, idx.at[i].set(jnp.argmax(mind).astype(jnp.int32))

  idx = jnp.zeros((k,), jnp.int32).at[0].set(first)
  mind, idx = lax.fori_loop(1, k, body, (jnp.full(z.shape[:1], jnp.inf), idx))
  mind = jnp.minimum(mind, _sqdist_to(z, sq, z[idx[k - 1]]))
  return idx, mind


@functools.partial(jax.jit, static_argnames=("k", "batch", "candidates", "chunk"))
def greedy_kcenter(z: jax.Array, k: int, first: int | jax.Array = 0, *, batch: int = 256,
                   candidates: int = 8192, chunk: int = 16384):
  """Exact greedy k-center with lazy, batched updates; selections as `greedy_kcenter_dense`.

  Keeps `mind`, a stale upper bound of every point's squared distance to its
  nearest centre, refreshed by one matmul against up to `batch` pending centres
  (a "flush", done in row chunks of `chunk`). Between flushes the next centre
  is picked among the `candidates` points of largest stale `mind`, whose exact
  values are kept up to date (T x d work per step). The pick is exact while the
  best candidate's exact value is >= the largest stale value outside the set
  (no outsider can beat it); otherwise, or when `batch` centres are pending, a
  flush refreshes everything. Memory: O(N + chunk * batch + candidates).

  Args:
    z: `[N, d]` points (usually projected features).
    k: number of centres, 1 <= k <= N.
    first: index of the first centre.

  Returns:
    `(indices [k] int32, min_sqdist [N] float32)`.
  """
  chex.assert_rank(z, 2)
  n, d = z.shape
  t = int(min(candidates, n))
  nck = -(-n // chunk)
  zp = jnp.pad(z, ((0, nck * chunk - n), (0, 0)))
  sq = jnp.sum(zp * zp, axis=-1)

  def flush(mind, pend, npend):
    valid = jnp.arange(batch) < npend
    pp = jnp.sum(pend * pend, -1)

    def one(i, mind):
      s = i * chunk
      zc = lax.dynamic_slice(zp, (s, 0), (chunk, d))
      d2 = lax.dynamic_slice(sq, (s,), (chunk,))[:, None] - 2.0 * zc @ pend.T + pp[None]
      d2 = jnp.where(valid[None], jnp.maximum(d2, 0.0), jnp.inf)
      upd = jnp.minimum(lax.dynamic_slice(mind, (s,), (chunk,)), jnp.min(d2, axis=1))
      return lax.dynamic_update_slice(mind, upd, (s,))

    return lax.fori_loop(0, nck, one, mind)

  def refresh(mind):
    top, cand = lax.top_k(jnp.where(jnp.arange(nck * chunk) < n, mind, -1.0), t + 1 if t < n else t)
    thr = top[t] if t < n else -1.0
    return cand[:t].astype(jnp.int32), top[:t], thr

  def outer(st):
    mind, idx, i, pend, npend = st
    mind = flush(mind, pend, npend)
    cand, cm, thr = refresh(mind)
    zc, sc = zp[cand], sq[cand]

    def cond(s2):
      i, cm, pend, npend, ok = s2
      return (i < k) & (npend < batch) & ok

    def body(s2):
      i, cm, pend, npend, _ = s2
      j = jnp.argmax(cm)
      ok = cm[j] >= thr
      c = zc[j]

      def take(_):
        newcm = jnp.minimum(cm, jnp.maximum(sc - 2.0 * zc @ c + jnp.dot(c, c), 0.0))
        return i + 1, newcm, pend.at[npend].set(c), npend + 1, cand[j]

      def stop(_):
        return i, cm, pend, npend, jnp.int32(-1)

      i2, cm2, pend2, npend2, picked = lax.cond(ok, take, stop, None)
      return (i2, cm2, pend2, npend2, ok), picked

    def body_idx(s3):
      s2, idx = s3
      i_before = s2[0]
      s2, picked = body(s2)
      idx = jnp.where(picked >= 0, idx.at[i_before].set(picked), idx)
      return s2, idx

    (i, _, pend, npend, _), idx = lax.while_loop(
        lambda s3: cond(s3[0]), body_idx,
        ((i, cm, jnp.zeros_like(pend), jnp.int32(0), True), idx))
    return mind, idx, i, pend, npend

  first = jnp.asarray(first, jnp.int32)
  pend0 = jnp.zeros((batch, d), z.dtype).at[0].set(z[first])
  idx0 = jnp.zeros((k,), jnp.int32).at[0].set(first)
  st = (jnp.full((nck * chunk,), jnp.inf), idx0, jnp.int32(1), pend0, jnp.int32(1))
  mind, idx, _, pend, npend = lax.while_loop(lambda st: st[2] < k, outer, st)
  mind = flush(mind, pend, npend)
  return idx, mind[:n]


def select_coreset(features: jax.Array, key: jax.Array, *, ratio: float | None = 0.1,
                   size: int | None = None, proj_dim: int | None = 128) -> jax.Array:
  """Indices of a greedy k-center coreset of `features [N, D]`.

  The first centre is drawn uniformly with `key`; the projection uses a key
  folded from it. Returns int32 `[k]`, first centre first.
  """
  chex.assert_rank(features, 2)
  n = features.shape[0]
  k = coreset_size(n, ratio, size)
  k_first, k_proj = jax.random.split(key)
  first = jax.random.randint(k_first, (), 0, n)
  z = project(features, k_proj, proj_dim)
  idx, _ = greedy_kcenter(z, k, first)
  return idx


def covering_radius(points: np.ndarray, centres: np.ndarray) -> float:
  """max_x min_c ||x - c||, computed in numpy chunks (for tests and reports)."""
  points, centres = np.asarray(points, np.float64), np.asarray(centres, np.float64)
  best = 0.0
  cc = (centres ** 2).sum(-1)
  for s in range(0, len(points), 4096):
    p = points[s:s + 4096]
    d2 = (p ** 2).sum(-1)[:, None] - 2 * p @ centres.T + cc[None]
    best = max(best, float(np.sqrt(max(d2.min(axis=1).max(), 0.0))))
  return best
