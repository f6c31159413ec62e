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
