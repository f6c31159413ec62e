"""PatchCore's locally aware patch features (Roth et al., CVPR 2022, Sec. 3.1).

For each tapped feature map, every position is replaced by the average of its
p x p neighbourhood (Eq. 2, p = 3 by default; zero padding counted, as
PyTorch's AvgPool2d(3, 1, 1)); deeper maps are upsampled bilinearly (half-pixel
centres, like `F.interpolate(align_corners=False)`) to the resolution of the
shallowest tapped map; the maps are concatenated along channels and optionally
reduced to `out_dim` channels by adaptive average pooling over the channel axis.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
from jax import lax

IMAGENET_MEAN = jnp.array([0.485, 0.456, 0.406], jnp.float32)
IMAGENET_STD = jnp.array([0.229, 0.224, 0.225], jnp.float32)


def crop_and_normalise(images: jax.Array, crop: int) -> jax.Array:
  """uint8 or float `[B, R, R, 3]` in [0, 255] -> centre `crop`, ImageNet-normalised float32."""
  chex.assert_rank(images, 4)
  h, w = images.shape[1:3]
  t, l = (h - crop) // 2, (w - crop) // 2
  x = images[:, t:t + crop, l:l + crop].astype(jnp.float32) / 255.0
  return (x - IMAGENET_MEAN) / IMAGENET_STD


def local_average(fmap: jax.Array, pool: int = 3) -> jax.Array:
  """p x p average over each neighbourhood, stride 1, zero padding: `[B,h,w,C]` -> same."""
  if pool <= 1:
    return fmap
  lo = (pool - 1) // 2
  s = lax.reduce_window(fmap, 0.0, lax.add, (1, pool, pool, 1), (1, 1, 1, 1),
                        ((0, 0), (lo, pool - 1 - lo), (lo, pool - 1 - lo), (0, 0)))
  return s / (pool * pool)


def adaptive_channel_pool(x: jax.Array, out_dim: int) -> jax.Array:
  """Adaptive average pooling over the last axis, as `F.adaptive_avg_pool1d`: `[..., C]` -> `[..., out_dim]`."""
  c = x.shape[-1]
  if out_dim >= c:
    return x
  starts = [(i * c) // out_dim for i in range(out_dim)]
  ends = [-(-((i + 1) * c) // out_dim) for i in range(out_dim)]
  w = jnp.zeros((c, out_dim), x.dtype)
  for i, (a, b) in enumerate(zip(starts, ends)):
    w = w.at[a:b, i].set(1.0 / (b - a))
  return x @ w


def patch_features(maps: Mapping[str, jax.Array], taps: Sequence[str], pool: int = 3,
                   out_dim: int | None = None) -> jax.Array:
  """Locally aware patch features from backbone maps.

  Args:
    maps: backbone outputs, each `[B, h_i, w_i, C_i]`.
    taps: names of the maps to use (any order; the largest map sets the grid).
    pool: neighbourhood size p.
    out_dim: optional channel reduction (adaptive average pooling).

  Returns:
    `[B, h, w, D]` float32 with `D = sum C_i` (or `out_dim`).
  """
  fm = [maps[t] for t in taps]
  for f in fm:
    chex.assert_rank(f, 4)
  h, w = max((f.shape[1], f.shape[2]) for f in fm)
  out = []
  for f in fm:
    f = local_average(f.astype(jnp.float32), pool)
    if f.shape[1:3] != (h, w):
      f = jax.image.resize(f, (f.shape[0], h, w, f.shape[3]), method="bilinear")
    out.append(f)
  feats = jnp.concatenate(out, axis=-1)
  return adaptive_channel_pool(feats, out_dim) if out_dim else feats


def make_extractor(module, taps: Sequence[str], crop: int, pool: int = 3,
                   out_dim: int | None = None, train: bool = False) -> Callable:
  """`f(variables, images[B,R,R,3] in [0,255]) -> [B, h, w, D]`, pure and jit-able.

  With `train=True` BatchNorm normalises with the batch's own statistics (the
  running statistics are not updated).
  """
  def extract(variables, images):
    x = crop_and_normalise(images, crop)
    if train:
      maps, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
      maps = module.apply(variables, x, train=False)
    return patch_features(maps, taps, pool, out_dim)
  return extract


def patch_labels(masks: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """Anomalous patches `[B, h, w]` bool: cells of the grid holding any mask pixel.

  Args:
    masks: `[B, H, W]` ground truth at the crop resolution (nonzero = anomalous),
      H and W multiples of the grid.
  """
  b, hh, ww = masks.shape
  h, w = grid
  cells = (masks > 0).reshape(b, h, hh // h, w, ww // w)
  return jnp.any(cells, axis=(2, 4))
