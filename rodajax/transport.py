"""Optimal transport between target patch features and the memory bank (RoDA, Alg. 1).

Geometry: cost C_ij = ||z_i - m_j||_2 (Euclidean, not squared, as in the
paper), as an OTT `Geometry` over the precomputed cost matrix. Problem: uniform marginals. Solver: OTT-JAX's log-domain Sinkhorn,
which returns dual potentials (f, g) with plan gamma_ij = exp((f_i + g_j - C_ij) / eps).

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
                        max_iterations: int = 200) -> Potentials:
  """Entropic OT between uniform measures on `x [n, D]` and `y [m, D]` with OTT.

  Args:
    epsilon: entropic regularisation; with `relative_epsilon` it is a fraction
      of the mean cost (scale-free across backbones and shifts).
    threshold: marginal error at which Sinkhorn stops.
    max_iterations: hard cap; `converged` says whether the threshold was met.
  """
  chex.assert_rank([x, y], 2)
  # The cost matrix is computed once with one matmul and handed to OTT as a
  # Geometry: PointCloud(cost_fn=Euclidean()) recomputes every pairwise norm in
  # each Sinkhorn iteration, about 3x slower on CPU for n x m = 1024 x 16K.
  geom = geometry.Geometry(cost_matrix=euclidean_cost(x, y), epsilon=epsilon,
                           relative_epsilon="mean" if relative_epsilon else None)
  solver = sinkhorn.Sinkhorn(threshold=threshold, max_iterations=max_iterations)
  out = solver(linear_problem.LinearProblem(geom))
  err = out.errors[jnp.maximum(out.n_iters // solver.inner_iterations - 1, 0)]
  return Potentials(out.f, out.g, jnp.asarray(geom.epsilon), out.converged, out.n_iters, err)


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
    `(ti [n + m], bj [n + m], w [n + m])`.
  """
  n, m = row.shape[0], col.shape[0]
  ti = jnp.concatenate([jnp.arange(n, dtype=jnp.int32), col])
  bj = jnp.concatenate([row, jnp.arange(m, dtype=jnp.int32)])
  w = jnp.concatenate([jnp.ones((n,)), (row[col] != jnp.arange(m)).astype(jnp.float32)])
  return ti, bj, w


def discrete_loss(z: jax.Array, bank: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
  """sum_ij pi_ij C_ij / sum_ij pi_ij; gradients flow into `z` only."""
  ti, bj, w = discrete_pairs(row, col)
  diff = z[ti] - lax.stop_gradient(bank)[bj]
  d = jnp.sqrt(jnp.maximum(jnp.sum(diff * diff, -1), 1e-12))
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
                             jax.ShapeDtypeStruct((z.shape[0],), jnp.int32), c)
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
