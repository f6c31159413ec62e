"""PatchCore composed from the pure pieces: features -> coreset -> scoring.

Pure and jit-able: the loops that drive them over batches of images are
`experiments.loops.batched` / `experiments.loops.predict`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from rodajax import adapt, coreset, scoring


@dataclasses.dataclass
class MemoryBank:
  """The coreset of normal patch features, `bank [k, D]`, and source statistics."""
  bank: np.ndarray
  feature_mean: np.ndarray   # [D] mean of all training patch features
  feature_cov: np.ndarray    # [D, D] their covariance
  grid: tuple[int, int]      # patch grid (h, w) of one image

  def to_tree(self) -> dict:
    return {"bank": self.bank, "feature_mean": self.feature_mean,
            "feature_cov": self.feature_cov, "grid": np.asarray(self.grid, np.int32)}

  @classmethod
  def from_tree(cls, t) -> "MemoryBank":
    return cls(np.asarray(t["bank"]), np.asarray(t["feature_mean"]),
               np.asarray(t["feature_cov"]), tuple(int(g) for g in np.asarray(t["grid"])))


def fit_memory_bank(train_features: np.ndarray, key: jax.Array, ratio: float | None = 0.1,
                    size: int | None = None, proj_dim: int | None = 128) -> MemoryBank:
  """Greedy k-center coreset of the training patches `[N, h, w, D]` (PatchCore Alg. 1)."""
  n, h, w, d = train_features.shape
  flat = jnp.asarray(train_features.reshape(-1, d))
  idx = coreset.select_coreset(flat, key, ratio=ratio, size=size, proj_dim=proj_dim)
  mean = jnp.mean(flat, axis=0)
  cov = (flat - mean).T @ (flat - mean) / max(flat.shape[0] - 1, 1)
  return MemoryBank(np.asarray(flat[idx]), np.asarray(mean), np.asarray(cov), (h, w))


def make_scorer(crop: int, sigma: float = 4.0, chunk: int = 2048, reweight: int = 0) -> Callable:
  """`f(features [B, h, w, D], bank [k, D], valid=None) -> (image_scores [B], maps [B, crop, crop])`.

  Jit-able and vmap-able across classes (`valid [k]` masks a padded bank,
  `scoring.pad_banks`).
  """

  def score(features, bank, valid=None):
    if reweight:    # Eq. 7 needs each patch's nearest bank entry
      s, idx = scoring.patch_scores(features, bank, chunk, valid)
      img = scoring.reweighted_image_scores(features, s, idx, bank, reweight, valid)
    else:
      s = scoring.patch_distances(features, bank, chunk, valid)
      img = scoring.image_scores(s)
    return img, scoring.anomaly_maps(s, crop, sigma)
  return score


def make_predict(extract: Callable, crop: int, sigma: float = 4.0, chunk: int = 2048,
                 reweight: int = 0) -> Callable:
  """Jitted `f(variables, bank [k, D], images [B, R, R, 3], valid=None) -> (scores [B], maps [B, crop, crop])`.

  Build it once per experiment: the bank and the variables are arguments, so
  one compilation serves every (shift, method) that shares the extractor.
  `valid [k]` masks padding rows (a bank padded to the devices it is sharded
  over, `experiments.placement.shard_bank`).
  """
  scorer = make_scorer(crop, sigma, chunk, reweight)
  return jax.jit(lambda v, bank, x, valid=None: scorer(extract(v, x), bank, valid))


def make_class_predict(extract: Callable, params, crop: int, sigma: float = 4.0,
                       chunk: int = 2048, reweight: int = 0, class_batch: int = 0) -> Callable:
  """`make_predict` vmapped across classes, jitted once.

  `f(variables, banks [C, M, D], valid [C, M], images [C, B, R, R, 3])
  -> (scores [C, B], maps [C, B, crop, crop])`. `variables` is an
  `adapt.stack_classes` tree (per-class BatchNorm affine parameters and
  statistics, the frozen weights of `params`' structure shared); banks are
  padded to a common size (`scoring.pad_banks`). Equal to calling
  `make_predict` class by class (tests/test_multiclass.py). `class_batch`:
  see `adapt.class_map` (0 = one vmap over all classes).
  """
  scorer = make_scorer(crop, sigma, chunk, reweight)
  axes = {"params": adapt.class_axes(params), "batch_stats": 0}
  return jax.jit(adapt.class_map(lambda v, bank, valid, x: scorer(extract(v, x), bank, valid),
                                 (axes, 0, 0, 0), class_batch))
