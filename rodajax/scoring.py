"""Nearest-neighbour scoring against a memory bank (PatchCore, Roth et al. 2022, Sec. 3.3).

Patch score s(p) = min_{m in M} ||p - m||_2; image score s* = max_p s(p)
(optionally reweighted, Eq. 7); anomaly map = patch scores bilinearly
upsampled to the input crop and blurred by a Gaussian (sigma 4 px).
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _chunked(queries, bank, chunk, valid=None):
  """Queries `[Q, D]` padded into `[ceil(Q / chunk), chunk, D]`, the float32 bank, its norms^2.

  Rows of `bank` where `valid [M]` is False get norm^2 = +inf: they are never
  the nearest entry (padding of `pad_banks`).
  """
  chex.assert_rank([queries, bank], 2)
  chex.assert_equal(queries.shape[1], bank.shape[1])
  q = queries.shape[0]
  n = -(-q // chunk)
  qp = jnp.pad(queries.astype(jnp.float32), ((0, n * chunk - q), (0, 0))).reshape(n, chunk, -1)
  bank = bank.astype(jnp.float32)
  bb = jnp.sum(bank * bank, axis=-1)
  if valid is not None:
    chex.assert_shape(valid, bank.shape[:1])
    bb = jnp.where(valid, bb, jnp.inf)
  return qp, bank, bb


def pad_banks(banks) -> tuple[np.ndarray, np.ndarray]:
  """Memory banks of different sizes `[M_c, D]` stacked for `jax.vmap` across classes.

  Returns `(banks [C, M_max, D] float32, valid [C, M_max] bool)`; padded rows
  are zeros and marked invalid. Every function here that takes `valid`
  ignores them, so scores equal those against the unpadded bank.
  """
  banks = [np.asarray(b, np.float32) for b in banks]
  if not banks:
    raise ValueError("no memory banks to stack")
  dims = {b.shape[1] for b in banks}
  if len(dims) != 1:
    raise ValueError(f"memory banks have different feature sizes {sorted(dims)}; stack banks of "
                     "one backbone and one set of taps")
  m = max(len(b) for b in banks)
  out = np.zeros((len(banks), m, dims.pop()), np.float32)
  valid = np.zeros((len(banks), m), bool)
  for c, b in enumerate(banks):
    out[c, :len(b)], valid[c, :len(b)] = b, True
  return out, valid


@functools.partial(jax.jit, static_argnames=("chunk",))
def nearest_neighbours(queries: jax.Array, bank: jax.Array, chunk: int = 2048,
                       valid: jax.Array | None = None):
  """Euclidean distance of each query to its nearest bank row, and that row.

  Args:
    queries: `[Q, D]`.
    bank: `[M, D]`.
    chunk: queries per matmul; peak memory is about `chunk * M` floats.
    valid: optional `[M]` bool; False rows (padding) are never chosen.

  Returns:
    `(dist [Q] float32, index [Q] int32)`.
  """
  q = queries.shape[0]
  qp, bank, bb = _chunked(queries, bank, chunk, valid)

  def one(x):
    d2 = jnp.sum(x * x, -1)[:, None] - 2.0 * x @ bank.T + bb[None]
    i = jnp.argmin(d2, axis=1)
    return jnp.sqrt(jnp.maximum(jnp.take_along_axis(d2, i[:, None], 1)[:, 0], 0.0)), i.astype(jnp.int32)

  d, i = lax.map(one, qp)
  return d.reshape(-1)[:q], i.reshape(-1)[:q]


@functools.partial(jax.jit, static_argnames=("chunk",))
def nearest_distances(queries: jax.Array, bank: jax.Array, chunk: int = 2048,
                      valid: jax.Array | None = None) -> jax.Array:
  """Euclidean distance `[Q]` of each query `[Q, D]` to its nearest row of `bank [M, D]`.

  The distances of `nearest_neighbours` without the index: min over m of
  ||m||^2 - 2 q.m, one fused matmul + min per chunk (the `[chunk, M]` block is
  never written out), 3-4x faster on CPU than the arg-min. Equal to
  `nearest_neighbours`' distances up to float rounding (~1e-6 relative).
  `valid [M]` (optional) masks padded rows out. With `bank` placed with a
  `NamedSharding` over its rows, XLA computes each shard's minimum and reduces
  them (tests/test_sharding.py); the math does not change.
  """
  q = queries.shape[0]
  qp, bank, bb = _chunked(queries, bank, chunk, valid)
  minus2 = -2.0 * bank

  def one(x):
    d2 = jnp.min(x @ minus2.T + bb[None], axis=1) + jnp.sum(x * x, -1)
    return jnp.sqrt(jnp.maximum(d2, 0.0))

  return lax.map(one, qp).reshape(-1)[:q]


def patch_distances(features: jax.Array, bank: jax.Array, chunk: int = 2048,
                    valid: jax.Array | None = None) -> jax.Array:
  """`[B, h, w, D]` -> nearest-bank distances `[B, h, w]` (no index: `nearest_distances`)."""
  chex.assert_rank(features, 4)
  b, h, w, d = features.shape
  return nearest_distances(features.reshape(-1, d), bank, chunk, valid).reshape(b, h, w)


def patch_scores(features: jax.Array, bank: jax.Array, chunk: int = 2048,
                 valid: jax.Array | None = None):
  """`[B, h, w, D]` -> `(scores [B, h, w], nn_index [B, h, w])`."""
  chex.assert_rank(features, 4)
  b, h, w, d = features.shape
  dist, idx = nearest_neighbours(features.reshape(-1, d), bank, chunk, valid)
  return dist.reshape(b, h, w), idx.reshape(b, h, w)


def image_scores(scores: jax.Array) -> jax.Array:
  """Image score = largest patch score: `[B, h, w]` -> `[B]`."""
  return jnp.max(scores.reshape(scores.shape[0], -1), axis=1)


def reweighted_image_scores(features: jax.Array, scores: jax.Array, nn_index: jax.Array,
                            bank: jax.Array, neighbours: int = 3,
                            valid: jax.Array | None = None) -> jax.Array:
  """PatchCore Eq. 7: s = (1 - exp||m_t - m*|| / sum_{m in N_b(m*)} exp||m_t - m||) s*.

  m_t is the most anomalous test patch, m* its nearest bank entry and N_b(m*)
  the `neighbours` nearest bank entries of m* (m* included).

  Args:
    features: `[B, h, w, D]`; scores, nn_index: `[B, h, w]`; bank: `[M, D]`.

  Returns:
    `[B]` reweighted image scores.
  """
  b = features.shape[0]
  flat_s = scores.reshape(b, -1)
  p = jnp.argmax(flat_s, axis=1)
  mt = features.reshape(b, -1, features.shape[-1])[jnp.arange(b), p]
  star = nn_index.reshape(b, -1)[jnp.arange(b), p]
  ms = bank[star]
  d2 = jnp.sum(ms * ms, -1)[:, None] - 2 * ms @ bank.T + jnp.sum(bank * bank, -1)[None]
  if valid is not None:
    d2 = jnp.where(valid[None], d2, jnp.inf)
  _, nb = lax.top_k(-d2, neighbours)
  dist = jnp.linalg.norm(mt[:, None] - bank[nb], axis=-1)
  d_star = jnp.linalg.norm(mt - ms, axis=-1)
  # Softmax form of exp(d*)/sum exp(d), stable for large distances.
  w = 1.0 - jnp.exp(d_star - jax.nn.logsumexp(dist, axis=1))
  return w * flat_s[jnp.arange(b), p]


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """Normalised 1-D Gaussian, radius int(truncate * sigma + 0.5), as scipy.ndimage (a constant)."""
  r = int(truncate * sigma + 0.5)
  x = np.arange(-r, r + 1, dtype=np.float64)
  k = np.exp(-0.5 * (x / sigma) ** 2)
  return k / k.sum()


def gaussian_blur(maps: jax.Array, sigma: float, mode: str = "symmetric") -> jax.Array:
  """Separable Gaussian blur over axes 1 and 2 of `[B, H, W, ...]`, as scipy.ndimage.

  `mode` is the `jnp.pad` border: "symmetric" is scipy's 'reflect' (edge
  repeated), "edge" is scipy's 'nearest'.
  """
  if sigma <= 0:
    return maps
  k = gaussian_kernel1d(sigma)
  r = (k.shape[0] - 1) // 2

  def blur_axis(x, axis):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = jnp.pad(x, pad, mode=mode)
    n = x.shape[axis]
    out = 0.0
    for i in range(k.shape[0]):
      out = out + float(k[i]) * lax.slice_in_dim(xp, i, i + n, axis=axis)
    return out

  return blur_axis(blur_axis(maps, 1), 2)


def anomaly_maps(scores: jax.Array, size: int, sigma: float = 4.0) -> jax.Array:
  """Patch scores `[B, h, w]` -> pixel maps `[B, size, size]` (bilinear, then Gaussian)."""
  chex.assert_rank(scores, 3)
  up = jax.image.resize(scores, (scores.shape[0], size, size), method="bilinear")
  return gaussian_blur(up, sigma)
