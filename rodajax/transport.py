"""Optimal transport between target patch features and the memory bank (RoDA, Alg. 1).

Geometry: cost C_ij = ||z_i - m_j||_2 (Euclidean, not squared, as in the
paper), as an OTT `Geometry` over the precomputed cost matrix, or, for problems
too large to hold, costs recomputed in row chunks (`sinkhorn_online`). Problem:
uniform marginals. Solver: OTT-JAX's log-domain Sinkhorn, which returns dual
potentials (f, g) with plan gamma_ij = exp((f_i + g_j - C_ij) / eps).

Discretisation (paper Eq. 6): pi_ij = 1 if j = argmax_j gamma_ij or
i = argmax_i gamma_ij. Since eps > 0 and the exponential is monotone,
argmax_j gamma_ij = argmax_j (g_j - C_ij) and argmax_i gamma_ij =
argmax_i (f_i - C_ij): both come from the potentials in row chunks, without a
dense N_t x N_M plan. The plan is never differentiated: losses take gradients
only through the target features z.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn


class Potentials(NamedTuple):
  f: jax.Array          # [n] target potentials
  g: jax.Array          # [m] bank potentials
  epsilon: jax.Array    # the absolute entropic regularisation used
  converged: jax.Array  # bool
  n_iters: jax.Array    # int
  error: jax.Array      # last marginal error


def euclidean_cost(x: jax.Array, y: jax.Array) -> jax.Array:
  """C_ij = ||x_i - y_j||_2 for `x [n, D]`, `y [m, D]`, with a safe gradient at 0."""
  d2 = jnp.sum(x * x, -1)[:, None] - 2.0 * x @ y.T + jnp.sum(y * y, -1)[None]
  return jnp.sqrt(jnp.maximum(d2, 1e-12))


def sinkhorn_potentials(x: jax.Array, y: jax.Array, epsilon: float = 0.1,
                        relative_epsilon: bool = True, threshold: float = 1e-3,
                        max_iterations: int = 200, chunk: int | None = None) -> Potentials:
  """Entropic OT between uniform measures on `x [n, D]` and `y [m, D]` with OTT.

  Args:
    epsilon: entropic regularisation; with `relative_epsilon` it is a fraction
      of the mean cost (scale-free across backbones and shifts).
    threshold: marginal error at which Sinkhorn stops.
    max_iterations: hard cap; `converged` says whether the threshold was met.
    chunk: None computes the `[n, m]` cost matrix once (fast while it fits in
      memory); an integer solves online (`sinkhorn_online`): costs are
      recomputed `chunk` rows at a time in every iteration and no `[n, m]`
      array is ever held.
  """
  chex.assert_rank([x, y], 2)
  if chunk is not None:
    return sinkhorn_online(x, y, epsilon, relative_epsilon, threshold, max_iterations, chunk)
  # One matmul, handed to OTT as a Geometry: PointCloud(cost_fn=Euclidean())
  # recomputes every pairwise norm in each iteration, ~3x slower on CPU.
  geom = geometry.Geometry(cost_matrix=euclidean_cost(x, y), epsilon=epsilon,
                           relative_epsilon="mean" if relative_epsilon else None)
  solver = sinkhorn.Sinkhorn(threshold=threshold, max_iterations=max_iterations)
  out = solver(linear_problem.LinearProblem(geom))
  err = out.errors[jnp.maximum(out.n_iters // solver.inner_iterations - 1, 0)]
  return Potentials(out.f, out.g, jnp.asarray(geom.epsilon), out.converged, out.n_iters, err)


def _chunks(x: jax.Array, chunk: int):
  """`x [n, D]` padded to whole chunks: `([nc, chunk, D], valid [nc, chunk])`."""
  n = x.shape[0]
  nc = -(-n // chunk)
  xp = jnp.pad(x, ((0, nc * chunk - n), (0, 0))).reshape(nc, chunk, -1)
  valid = (jnp.arange(nc * chunk) < n).reshape(nc, chunk)
  return xp, valid


def sinkhorn_online(x: jax.Array, y: jax.Array, epsilon: float = 0.1,
                    relative_epsilon: bool = True, threshold: float = 1e-3,
                    max_iterations: int = 200, chunk: int = 2048) -> Potentials:
  """Log-domain Sinkhorn (uniform marginals) with costs recomputed `chunk` rows at a time.

  The same iteration as OTT's `Sinkhorn` on a `Geometry` (f-update, g-update;
  stop when the row-marginal L1 error is below `threshold`), for problems whose
  `[n, m]` cost matrix should not be held: peak memory ~ `chunk * m` floats.
  OTT's own online geometry (`PointCloud(batch_size=...)`) is not used because
  ott-jax 0.6 calls `jax.interpreters.batching.is_vmappable`, removed in jax 0.10.
  """
  n, m = x.shape[0], y.shape[0]
  xc, valid = _chunks(x, chunk)
  log_a, log_b = -jnp.log(n), -jnp.log(m)

  def cost_chunk(xi):
    return euclidean_cost(xi, y)                        # [chunk, m]

  if relative_epsilon:
    total = jnp.sum(lax.map(lambda a: jnp.sum(jnp.where(a[1][:, None], cost_chunk(a[0]), 0.0)),
                            (xc, valid)))
    eps = epsilon * total / (n * m)
  else:
    eps = jnp.asarray(epsilon, jnp.float32)

  def f_update(g):
    def one(xi):
      return -eps * jax.nn.logsumexp((g[None] - cost_chunk(xi)) / eps, axis=1) + eps * log_a
    return lax.map(one, xc).reshape(-1)[:n]

  def g_update(f):
    fc = jnp.pad(f, (0, xc.shape[0] * chunk - n), constant_values=-jnp.inf).reshape(-1, chunk)

    def body(acc, a):
      xi, fi = a
      return jnp.logaddexp(acc, jax.nn.logsumexp((fi[:, None] - cost_chunk(xi)) / eps, axis=0)), None
    lse, _ = lax.scan(body, jnp.full((m,), -jnp.inf), (xc, fc))
    return -eps * lse + eps * log_b

  def cond(c):
    _, _, it, err = c
    return (it < max_iterations) & (err > threshold)

  def body(c):
    f, g, it, _ = c
    f_new = f_update(g)
    # Row marginal of the plan before this f-update: a_i exp((f_i - f_new_i) / eps).
    err = jnp.where(it == 0, jnp.inf, jnp.sum(jnp.abs(jnp.exp((f - f_new) / eps + log_a) -
                                                      jnp.exp(log_a))))
    return f_new, g_update(f_new), it + 1, err

  f0, g0 = jnp.zeros(n), jnp.zeros(m)
  f, g, it, err = lax.while_loop(cond, body, (f0, g0, jnp.asarray(0), jnp.asarray(jnp.inf)))
  # The error of the last pair (f, g): one more f-update's change.
  err = jnp.sum(jnp.abs(jnp.exp((f - f_update(g)) / eps + log_a) - jnp.exp(log_a)))
  return Potentials(f, g, eps, err <= threshold, it, err)


def balanced_subsets(key: jax.Array, n_total: int, m_total: int, n: int = 0, m: int = 0,
                     bank_valid: jax.Array | None = None):
  """Indices of the target patches and bank entries that enter one transport problem.

  `n` (`m`) = 0 keeps all `n_total` target patches (`m_total` bank entries);
  otherwise that many are drawn uniformly without replacement. With n == m the
  two uniform marginals have as many atoms each, so row-argmax pairs (one per
  target patch) and column-argmax pairs (one per bank entry) weigh alike in
  Eq. 6. Returns `(target_idx [n'], bank_idx [m'] or None for the whole bank)`.

  Bank entries are the `m` largest of `m_total` uniform keys drawn with one
  key: the keys of the first rows do not depend on `m_total`, so a bank padded
  for `jax.vmap` across classes (`bank_valid [m_total]`, False = padding,
  never drawn) gives the same entries as the unpadded bank. A padded bank needs
  `m` > 0 and at least `m` valid rows (the caller checks: `check_padded`).
  """
  k_t, k_b = jax.random.split(key)
  n = n_total if n <= 0 else min(n, n_total)
  if bank_valid is not None and m <= 0:
    raise ValueError("a padded memory bank (classes stacked for vmap) needs bank_patches > 0: "
                     "the whole-bank problem would include the padding")
  m = m_total if m <= 0 else min(m, m_total)
  t_idx = (jnp.arange(n_total) if n == n_total
           else jax.random.choice(k_t, n_total, (n,), replace=False))
  if m == m_total and bank_valid is None:
    return t_idx, None
  u = jax.random.uniform(k_b, (m_total,))
  if bank_valid is not None:
    u = jnp.where(bank_valid, u, -1.0)
  return t_idx, lax.top_k(u, m)[1]


def plan_diagnostics(x: jax.Array, y: jax.Array, row: jax.Array, col: jax.Array) -> dict:
  """How the discretised plan (Eq. 6) spreads its pairs; all scalars, on device.

  Returns:
    row_share: share of sum(pi * C) carried by row-argmax pairs (i, argmax_j);
      the rest comes from column-argmax pairs that are not also row pairs.
    col_pairs_share: share of the counted pairs that are column pairs.
    col_distinct: distinct target patches chosen as some bank entry's column
      argmax (of n); few means a handful of target patches absorb the bank.
    row_distinct: distinct bank entries chosen as row argmax (of m).
  """
  n, m = x.shape[0], y.shape[0]
  ti, bj, w = discrete_pairs(row, col)
  d = pair_distances(x, y, ti, bj) * w
  return {"row_share": jnp.sum(d[:n]) / jnp.maximum(jnp.sum(d), 1e-12),
          "col_pairs_share": jnp.sum(w[n:]) / jnp.sum(w),
          "col_distinct": jnp.sum(jnp.zeros(n).at[col].set(1.0)),
          "row_distinct": jnp.sum(jnp.zeros(m).at[row].set(1.0))}


@functools.partial(jax.jit, static_argnames=("chunk",))
def plan_argmaxes(x: jax.Array, y: jax.Array, f: jax.Array, g: jax.Array, chunk: int = 1024):
  """Row and column argmaxes of gamma from the potentials, in row chunks.

  Returns:
    `(row [n] int32: argmax_j gamma_ij, col [m] int32: argmax_i gamma_ij)`.
  """
  n = x.shape[0]
  chunk = min(chunk, n)  # never pad a small problem up to a full chunk
  nc = -(-n // chunk)
  xp = jnp.pad(x, ((0, nc * chunk - n), (0, 0)))
  fp = jnp.pad(f, (0, nc * chunk - n), constant_values=-jnp.inf)

  def body(carry, i):
    best, arg = carry
    xc = lax.dynamic_slice_in_dim(xp, i * chunk, chunk)
    fc = lax.dynamic_slice_in_dim(fp, i * chunk, chunk)
    c = euclidean_cost(xc, y)
    row = jnp.argmax(g[None] - c, axis=1).astype(jnp.int32)
    s = fc[:, None] - c
    cm, ca = jnp.max(s, axis=0), jnp.argmax(s, axis=0).astype(jnp.int32) + i * chunk
    better = cm > best
    return (jnp.where(better, cm, best), jnp.where(better, ca, arg)), row

  init = (jnp.full((y.shape[0],), -jnp.inf), jnp.zeros((y.shape[0],), jnp.int32))
  (_, col), rows = lax.scan(body, init, jnp.arange(nc))
  return rows.reshape(-1)[:n], col


def dense_plan(x, y, pot: Potentials) -> jax.Array:
  """gamma `[n, m]` (small problems and tests only)."""
  return jnp.exp((pot.f[:, None] + pot.g[None] - euclidean_cost(x, y)) / pot.epsilon)


def discretise(gamma: jax.Array) -> jax.Array:
  """Paper Eq. 6 on a dense plan: pi_ij = 1 iff j = argmax_j gamma_ij or i = argmax_i gamma_ij.

  Ties resolve to the first maximal index (numpy's argmax convention).
  """
  n, m = gamma.shape
  row = jnp.zeros((n, m), bool).at[jnp.arange(n), jnp.argmax(gamma, 1)].set(True)
  col = jnp.zeros((n, m), bool).at[jnp.argmax(gamma, 0), jnp.arange(m)].set(True)
  return (row | col).astype(jnp.float32)


def discrete_pairs(row: jax.Array, col: jax.Array):
  """The assignments of pi as index pairs with a weight (1 = counted, 0 = duplicate).

  Row pairs (i, row_i) all count; a column pair (col_j, j) counts unless it
  already is a row pair (row[col_j] == j).

  Returns:
    `(ti [n + m], bj [n + m], w [n + m])`: the first n are the row pairs in the
    order of i (`discrete_loss`'s trimming relies on it), then the m column pairs.
  """
  n, m = row.shape[0], col.shape[0]
  ti = jnp.concatenate([jnp.arange(n, dtype=jnp.int32), col])
  bj = jnp.concatenate([row, jnp.arange(m, dtype=jnp.int32)])
  w = jnp.concatenate([jnp.ones((n,)), (row[col] != jnp.arange(m)).astype(jnp.float32)])
  return ti, bj, w


def pair_distances(x: jax.Array, y: jax.Array, ti: jax.Array, bj: jax.Array) -> jax.Array:
  """C at the listed pairs: ||x[ti] - y[bj]||_2 `[P]`, with a safe gradient at 0."""
  diff = x[ti] - y[bj]
  return jnp.sqrt(jnp.maximum(jnp.sum(diff * diff, -1), 1e-12))


def trimmed_target_mask(row_distances: jax.Array, trim: float) -> jax.Array:
  """The target patches a trimmed loss keeps: `[n]` bool (beyond the paper).

  `row_distances [n]`: each target patch's cost to its row-argmax bank entry,
  C_{i, row_i}; the `floor(trim * n)` largest are left out (ties at the cut are
  kept), as trimmed K-means leaves out its farthest points (Cuesta-Albertos et
  al. 1997). `trim` in [0, 1). No gradient flows through the choice.
  """
  n = row_distances.shape[0]
  d = lax.stop_gradient(row_distances)
  n_keep = n - int(trim * n)
  if n_keep >= n:
    return jnp.ones((n,), bool)
  if n_keep < 1:
    raise ValueError(f"trim {trim} leaves no target patch of {n}; use 0 <= trim < 1")
  return d <= jnp.sort(d)[n_keep - 1]


def discrete_loss(z: jax.Array, bank: jax.Array, row: jax.Array, col: jax.Array,
                  trim: float = 0.0) -> jax.Array:
  """sum_ij pi_ij C_ij / sum_ij pi_ij (Eq. 6); gradients flow into `z` only.

  `z [n, D]`, `bank [m, D]`, `row [n]` / `col [m]` the plan's argmaxes; a scalar.

  `trim` > 0 (beyond the paper): pairs whose target patch is among the `trim`
  share farthest from its row-argmax bank entry (`trimmed_target_mask`) are
  left out, row and column pairs alike, so likely anomalous patches are not
  pulled towards the bank. 0 is Eq. 6 as written.
  """
  ti, bj, w = discrete_pairs(row, col)
  d = pair_distances(z, lax.stop_gradient(bank), ti, bj)
  if trim:  # the first n pairs are the row pairs (i, row_i)
    w = w * trimmed_target_mask(d[:row.shape[0]], trim)[ti]
  return jnp.sum(w * d) / jnp.sum(w)


def continuous_loss(z: jax.Array, bank: jax.Array, pot: Potentials, chunk: int = 1024) -> jax.Array:
  """sum_ij gamma_ij C_ij / sum_ij gamma_ij with gamma fixed (stop-gradient), chunked.

  Each chunk is rematerialised in the backward pass, so memory stays at about
  `chunk * m` floats.
  """
  n = z.shape[0]
  nc = -(-n // chunk)
  zp = jnp.pad(z, ((0, nc * chunk - n), (0, 0)))
  fp = jnp.pad(lax.stop_gradient(pot.f), (0, nc * chunk - n), constant_values=-jnp.inf)
  g, eps, bank = lax.stop_gradient(pot.g), lax.stop_gradient(pot.epsilon), lax.stop_gradient(bank)

  @jax.checkpoint
  def one(zc, fc):
    c = euclidean_cost(zc, bank)
    gamma = lax.stop_gradient(jnp.exp((fc[:, None] + g[None] - lax.stop_gradient(c)) / eps))
    return jnp.sum(gamma * c), jnp.sum(gamma)

  tot, mass = lax.map(lambda a: one(*a), (zp.reshape(nc, chunk, -1), fp.reshape(nc, chunk)))
  return jnp.sum(tot) / jnp.sum(mass)


def hungarian_assignment(cost: np.ndarray) -> np.ndarray:
  """Optimal one-to-one assignment (scipy.optimize.linear_sum_assignment): column of each row."""
  from scipy.optimize import linear_sum_assignment
  cost = np.asarray(cost, np.float64)
  r, c = linear_sum_assignment(cost)
  out = np.zeros(cost.shape[0], np.int32)
  out[r] = c
  return out


def hungarian_loss(z: jax.Array, bank_sub: jax.Array) -> jax.Array:
  """Mean C over the Hungarian matching of `z [n, D]` to `bank_sub [n, D]` (host solver)."""
  c = lax.stop_gradient(euclidean_cost(z, bank_sub))
  assign = jax.pure_callback(hungarian_assignment,
                             jax.ShapeDtypeStruct((z.shape[0],), jnp.int32), c,
                             vmap_method="sequential")
  diff = z - lax.stop_gradient(bank_sub)[assign]
  return jnp.mean(jnp.sqrt(jnp.maximum(jnp.sum(diff * diff, -1), 1e-12)))


def assignment_weights(row: jax.Array, col: jax.Array) -> jax.Array:
  """Weight of each target patch in the discrete loss: its counted pairs `[n]` (Eq. 6).

  Patch i owns its row pair plus one pair per bank entry j whose column
  argmax is i (unless that pair is its row pair). The weights sum to the
  loss's normaliser `sum_ij pi_ij`.
  """
  ti, _, w = discrete_pairs(row, col)
  return jnp.zeros(row.shape[0]).at[ti].add(w)
