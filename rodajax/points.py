"""Point-cloud PatchCore pieces: normalisation, centres, groups, patch features, point scores.

The 3D counterpart of `features` + `scoring`, as in point PatchCore variants
(M3DM's point branch, Point-MAE grouping): for a cloud `[N, 3]`,
1. `farthest_point_sampling` picks G centres;
2. `knn_groups` gathers the k nearest points of each centre, centred on it and
   multiplied by `group_scale` (local surface patches brought to the scale the
   encoder was trained on);
3. the encoder (PointNet) runs on every point of every group; each tapped
   layer is max-pooled over the group's k points and the pooled layers are
   concatenated: one patch feature `[D]` per centre (`make_extractor`);
4. the patch scores (nearest-neighbour distances to the memory bank) give the
   object score (their max) and, by inverse-distance weighting of the 3
   nearest centres (PointNet++'s feature propagation), a score per point
   (`propagate`).
All functions are pure and jit-able; clouds in a batch have the same N.
"""
from __future__ import annotations

from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp

from rodajax import scoring


def normalise(points: jax.Array) -> jax.Array:
  """Centre each cloud on its mean and scale it into the unit sphere: `[B, N, 3]` -> same."""
  chex.assert_rank(points, 3)
  c = points - jnp.mean(points, axis=1, keepdims=True)
  r = jnp.max(jnp.linalg.norm(c, axis=-1), axis=1)
  return c / jnp.maximum(r, 1e-12)[:, None, None]


def _sqdist(a: jax.Array, b: jax.Array) -> jax.Array:
  """Squared distances `[n, m]` between `a [n, 3]` and `b [m, 3]`."""
  return jnp.maximum(jnp.sum(a * a, -1)[:, None] - 2 * a @ b.T + jnp.sum(b * b, -1)[None], 0.0)


def farthest_point_sampling(points: jax.Array, k: int, start: int = 0) -> jax.Array:
  """Indices `[k]` of k centres of one cloud `[N, 3]`, greedily farthest from those chosen.

  Deterministic: the first centre is point `start`. (Same greedy k-center rule
  as the coreset, in 3D.)
  """
  chex.assert_rank(points, 2)
  n = points.shape[0]
  if k > n:
    raise ValueError(f"cannot sample {k} centres from {n} points; lower the number of groups")

  def body(i, carry):
    idx, dist = carry
    last = points[idx[i - 1]]
    dist = jnp.minimum(dist, jnp.sum((points - last) ** 2, -1))
    return idx.at[i].set(jnp.argmax(dist).astype(jnp.int32)), dist
  idx = jnp.zeros(k, jnp.int32).at[0].set(start)
  idx, _ = jax.lax.fori_loop(1, k, body, (idx, jnp.full(n, jnp.inf, points.dtype)))
  return idx


def knn(queries: jax.Array, points: jax.Array, k: int) -> jax.Array:
  """Indices `[G, k]` of the k nearest `points [N, 3]` of each query `[G, 3]` (nearest first)."""
  _, idx = jax.lax.top_k(-_sqdist(queries, points), k)
  return idx


def knn_groups(points: jax.Array, n_groups: int, group_size: int,
               group_scale: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Local patches of clouds `[B, N, 3]`.

  Returns:
    `(centres [B, G, 3], groups [B, G, k, 3])`: FPS centres and their k nearest
    points, centred on the centre and multiplied by `group_scale`.
  """
  chex.assert_rank(points, 3)
  c = centres(points, n_groups)

  def one(p, cc):
    return (p[knn(cc, p, group_size)] - cc[:, None, :]) * group_scale
  return c, jax.vmap(one)(points, c)


def centres(points: jax.Array, n_groups: int) -> jax.Array:
  """The farthest-point-sampling centres `[B, G, 3]` of clouds `[B, N, 3]` (those of `knn_groups`)."""
  return jax.vmap(lambda p: p[farthest_point_sampling(p, n_groups)])(points)


def encoder_input(points: jax.Array, n_groups: int, group_size: int,
                  group_scale: float) -> jax.Array:
  """What the encoder sees: all groups' points of each cloud `[B, G * k, 3]`.

  BatchNorm statistics (`adapt.batch_moments`) are taken over this input.
  """
  _, g = knn_groups(points, n_groups, group_size, group_scale)
  return g.reshape(g.shape[0], -1, 3)


def make_extractor(module, taps: Sequence[str], n_groups: int, group_size: int,
                   group_scale: float, train: bool = False) -> Callable:
  """`f(variables, points [B, N, 3]) -> [B, G, D]` patch features, pure and jit-able.

  D is the sum of the tapped layers' widths; each layer is max-pooled over the
  k points of a group. `train=True`: BatchNorm uses the batch's statistics.
  """
  taps = tuple(taps)

  def extract(variables, points):
    x = encoder_input(points, n_groups, group_size, group_scale)
    if train:
      maps, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
      maps = module.apply(variables, x, train=False)
    b = points.shape[0]
    pooled = [jnp.max(maps[t].reshape(b, n_groups, group_size, -1), axis=2) for t in taps]
    return jnp.concatenate(pooled, axis=-1)
  return extract


def propagate(centres: jax.Array, scores: jax.Array, points: jax.Array,
              neighbours: int = 3) -> jax.Array:
  """Per-point scores `[N]` from patch scores `[G]` at `centres [G, 3]` (one cloud).

  Inverse-squared-distance weights over the `neighbours` nearest centres
  (Qi et al., PointNet++, Eq. 2 with p = 2).
  """
  d2 = _sqdist(points, centres)
  neg, idx = jax.lax.top_k(-d2, neighbours)
  w = 1.0 / jnp.maximum(-neg, 1e-10)
  return jnp.sum(w * scores[idx], axis=-1) / jnp.sum(w, axis=-1)


def make_predict(extract: Callable, n_groups: int, chunk: int = 2048,
                 neighbours: int = 3) -> Callable:
  """Jitted `f(variables, bank [M, D], points [B, N, 3]) -> (object_scores [B], point_scores [B, N])`.

  The object score is the largest patch score (PatchCore's image score in 3D).
  """
  def predict(variables, bank, points):
    z = extract(variables, points)                            # [B, G, D]
    s = scoring.nearest_distances(z.reshape(-1, z.shape[-1]), bank, chunk=chunk)
    s = s.reshape(z.shape[:2])
    per_point = jax.vmap(lambda c, sc, p: propagate(c, sc, p, neighbours))(
        centres(points, n_groups), s, points)
    return jnp.max(s, axis=1), per_point
  return jax.jit(predict)
