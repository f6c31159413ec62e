"""Distribution shifts on point clouds (the 3D counterpart of `corruptions`).

Clouds are `[B, N, 3]` float32 in unit-sphere units (`data.pointclouds`
normalises every cloud); a shift keeps N so batches keep their shape.
Severities 1-5, as ImageNet-C:

  gaussian_noise  i.i.d. N(0, sigma^2) on every coordinate (the paper's
                  Table 2 shift; a sensor's depth noise); sigma in unit-sphere
                  radii: 0.005, 0.01, 0.015, 0.02, 0.03.
  dropout         a share of the points lost (0.2 ... 0.8), the cloud filled
                  back to N by repeating survivors (a sparser scanner).
  density         points in a random half of the object (a random plane
                  through the centroid) kept with probability 0.8 ... 0.2 and
                  refilled from the rest (uneven density: occlusion, angle).
  rotation        a rigid rotation about a random axis by 2.5 ... 12.5
                  degrees (a part placed slightly askew).

Each shift is a pure function of the clouds, the severity and a JAX key; it
also returns, per output point, the index of the input point it comes from
(dropout and density repeat survivors), so labels follow their points.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

SIGMAS = (0.005, 0.01, 0.015, 0.02, 0.03)
DROP = (0.2, 0.35, 0.5, 0.65, 0.8)
DENSITY_KEEP = (0.8, 0.65, 0.5, 0.35, 0.2)
DEGREES = (2.5, 5.0, 7.5, 10.0, 12.5)


def _identity_order(x):
  return jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])


def gaussian_noise(x, severity, key):
  return x + SIGMAS[severity - 1] * jax.random.normal(key, x.shape, x.dtype), _identity_order(x)


def _refill(x, keep, key):
  """Each cloud with its dropped points replaced by kept ones: `([B, N, 3], source index [B, N])`."""
  def one(p, k, kk):
    # Sample N indices among the kept points (Gumbel top-k over log(keep)); kept points first.
    n = p.shape[0]
    score = jnp.where(k, 1.0 + jax.random.uniform(kk, (n,)), 0.0)
    order = jnp.argsort(-score)
    n_keep = jnp.maximum(jnp.sum(k), 1)
    idx = order[jnp.arange(n) % n_keep]
    return p[idx], idx
  return jax.vmap(one)(x, keep, jax.random.split(key, x.shape[0]))


def dropout(x, severity, key):
  k1, k2 = jax.random.split(key)
  keep = jax.random.uniform(k1, x.shape[:2]) >= DROP[severity - 1]
  return _refill(x, keep, k2)


def density(x, severity, key):
  k1, k2, k3 = jax.random.split(key, 3)
  normal = jax.random.normal(k1, (x.shape[0], 1, 3))
  side = jnp.sum((x - jnp.mean(x, axis=1, keepdims=True)) * normal, -1) > 0
  keep = ~side | (jax.random.uniform(k2, x.shape[:2]) < DENSITY_KEEP[severity - 1])
  return _refill(x, keep, k3)


def rotation_matrix(axis: jax.Array, angle: jax.Array) -> jax.Array:
  """Rodrigues: rotation `[3, 3]` by `angle` (radians) about unit `axis [3]`."""
  k = jnp.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
  return jnp.eye(3) + jnp.sin(angle) * k + (1 - jnp.cos(angle)) * k @ k


def rotation(x, severity, key):
  k1, k2 = jax.random.split(key)
  axes = jax.random.normal(k1, (x.shape[0], 3))
  axes = axes / jnp.linalg.norm(axes, axis=-1, keepdims=True)
  sign = jnp.where(jax.random.bernoulli(k2, 0.5, (x.shape[0],)), 1.0, -1.0)
  rot = jax.vmap(rotation_matrix)(axes, sign * jnp.deg2rad(DEGREES[severity - 1]))
  centre = jnp.mean(x, axis=1, keepdims=True)
  return jnp.einsum("bij,bnj->bni", rot, x - centre) + centre, _identity_order(x)


SHIFTS = {"gaussian_noise": gaussian_noise, "dropout": dropout, "density": density,
          "rotation": rotation}


def names() -> list[str]:
  return list(SHIFTS)


def check(name: str, severity: int) -> None:
  if name not in SHIFTS:
    raise ValueError(f"unknown point-cloud shift {name!r}; known: {', '.join(SHIFTS)}")
  if not 1 <= int(severity) <= 5:
    raise ValueError(f"severity must be 1-5, got {severity}")


def corrupt_indexed(points: jax.Array, name: str, severity: int,
                    key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Shift `name` at `severity` of clouds `[B, N, 3]`: `(shifted [B, N, 3], source [B, N])`.

  `source[b, i]` is the input point that output point i comes from, so
  per-point labels follow their points (`labels[b, source[b]]`).
  """
  check(name, severity)
  chex.assert_rank(points, 3)
  return SHIFTS[name](jnp.asarray(points, jnp.float32), int(severity), key)


def corrupt(points: jax.Array, name: str, severity: int, key: jax.Array) -> jax.Array:
  """Shift `name` at `severity` of clouds `[B, N, 3]` float32 -> same shape."""
  return corrupt_indexed(points, name, severity, key)[0]
