"""Target-domain views for RoDA: rotations by multiples of 90 degrees and flips.

`views(images, key, n_views, mode)`:
  * "dihedral": view 0 is the image itself, the others are distinct random
    elements of the dihedral group D4 (4 rotations x optional horizontal flip);
  * "copy": n_views identical copies (the paper's "direct copy" ablation).
Images `[B, H, W, C]` (H == W) -> `[B * n_views, H, W, C]`, grouped per view.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def dihedral(x: jax.Array, t: int) -> jax.Array:
  """Element t in 0..7 of D4 on `[B, H, W, C]`: rot90 by t % 4, then a flip if t >= 4."""
  y = jnp.rot90(x, k=t % 4, axes=(1, 2))
  return jnp.flip(y, axis=2) if t >= 4 else y


def views(images: jax.Array, key: jax.Array, n_views: int = 4, mode: str = "dihedral") -> jax.Array:
  if mode not in ("dihedral", "copy"):
    raise ValueError(f"unknown augmentation mode {mode!r}; known: dihedral, copy")
  if not 1 <= n_views <= 8:
    raise ValueError(f"n_views must be in 1..8, got {n_views}")
  if mode == "copy":
    return jnp.concatenate([images] * n_views)
  perm = jax.random.permutation(key, jnp.arange(1, 8))[: n_views - 1]
  out = [images]
  for i in range(n_views - 1):
    out.append(jax.lax.switch(perm[i], [lambda x, t=t: dihedral(x, t) for t in range(8)], images))
  return jnp.concatenate(out)


def point_views(points: jax.Array, key: jax.Array, n_views: int = 4,
                mode: str = "dihedral", max_degrees: float = 10.0) -> jax.Array:
  """RoDA's views of point clouds `[B, N, 3]` -> `[B * n_views, N, 3]`, grouped per view.

  "copy": identical copies. Otherwise (the 3D counterpart of "dihedral") view
  0 is the cloud itself and each other view is the same cloud with its points
  permuted (farthest-point sampling then starts elsewhere: new patch centres,
  i.e. a resampling of the surface) and rotated about the up (y) axis by a
  uniform angle in +/- `max_degrees`.
  """
  if mode == "copy":
    return jnp.concatenate([points] * n_views)
  if not 1 <= n_views:
    raise ValueError(f"n_views must be >= 1, got {n_views}")
  out = [points]
  b, n = points.shape[:2]
  for i, k in enumerate(jax.random.split(key, n_views - 1)):
    kp, ka = jax.random.split(k)
    perm = jax.vmap(lambda kk: jax.random.permutation(kk, n))(jax.random.split(kp, b))
    x = jnp.take_along_axis(points, perm[..., None], axis=1)
    a = jnp.deg2rad(max_degrees) * jax.random.uniform(ka, (b,), minval=-1.0, maxval=1.0)
    c, s = jnp.cos(a)[:, None], jnp.sin(a)[:, None]
    x = jnp.stack([c * x[..., 0] + s * x[..., 2], x[..., 1], -s * x[..., 0] + c * x[..., 2]], -1)
    out.append(x)
  return jnp.concatenate(out)


def pseudo_anomalies(images: jax.Array, key: jax.Array, copies: int = 4,
                     size_fraction: float = 0.125, margin_fraction: float = 0.125) -> jax.Array:
  """Synthetic local defects on images `[B, R, R, C]` -> `[B * copies, R, R, C]` (CutPaste-like).

  Each copy of image b gets one square of side `size_fraction * R` taken from a
  random place of image (b + 1) % B, turned by a random multiple of 90
  degrees, and pasted at a random place at least `margin_fraction * R` from
  the border (inside a centre crop). Label-free: the safeguard uses it to ask
  whether a model still tells a local change from the normal variation of
  the same (shifted) domain (Li et al., CVPR 2021, CutPaste, without the
  colour jitter). Grouped per copy: rows c * B .. (c + 1) * B - 1 are copy c.
  """
  b, r = images.shape[:2]
  s = max(1, int(round(size_fraction * r)))
  lo = int(round(margin_fraction * r))
  hi = max(lo + 1, r - lo - s + 1)
  donors = jnp.roll(images, -1, axis=0)

  def one(img, donor, k):
    k_from, k_to, k_rot = jax.random.split(k, 3)
    fy, fx = jax.random.randint(k_from, (2,), 0, r - s + 1)
    ty, tx = jax.random.randint(k_to, (2,), lo, hi)
    patch = jax.lax.dynamic_slice(donor, (fy, fx, 0), (s, s, img.shape[-1]))
    patch = jax.lax.switch(jax.random.randint(k_rot, (), 0, 4),
                           [lambda p, t=t: jnp.rot90(p, t) for t in range(4)], patch)
    return jax.lax.dynamic_update_slice(img, patch, (ty, tx, 0))

  keys = jax.random.split(key, copies * b).reshape(copies, b)
  return jnp.concatenate([jax.vmap(one)(images, donors, keys[c]) for c in range(copies)])


def point_pseudo_anomalies(points: jax.Array, key: jax.Array, copies: int = 4,
                           fraction: float = 0.04, depth: float = 0.08) -> jax.Array:
  """Synthetic local bulges on clouds `[B, N, 3]` -> `[B * copies, N, 3]`, grouped per copy.

  Each copy pushes the `fraction * N` points nearest a random point of the
  cloud outwards (away from the cloud's centroid) by up to `depth` (unit-sphere
  radii), tapering linearly to 0 at the region's edge: the dev sets' bulge
  (`experiments.make_pointclouds`) without a mesh or normals.
  """
  b, n = points.shape[:2]
  k = max(1, int(round(fraction * n)))

  def one(x, kk):
    c = x[jax.random.randint(kk, (), 0, n)]
    d = jnp.linalg.norm(x - c, axis=-1)
    neg, idx = jax.lax.top_k(-d, k)
    radius = jnp.maximum(-neg[-1], 1e-6)
    direction = x[idx] - jnp.mean(x, axis=0)
    direction = direction / jnp.maximum(jnp.linalg.norm(direction, axis=-1, keepdims=True), 1e-6)
    return x.at[idx].add(depth * (1.0 + neg / radius)[:, None] * direction)

  keys = jax.random.split(key, copies * b).reshape(copies, b)
  return jnp.concatenate([jax.vmap(one)(points, keys[c]) for c in range(copies)])
