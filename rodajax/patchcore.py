"""PatchCore composed from the pure pieces: features -> coreset -> scoring.

The functions here drive jitted steps over batches (fixed batch shape, the
last batch padded, so one compilation serves all); they do no file I/O. Pass
`progress` (e.g. `tqdm`) to see long loops advance.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from rodajax import coreset, scoring


def _identity(it: Iterable, **_) -> Iterable:
  return it


def batched(fn: Callable, variables, images: np.ndarray, batch: int,
            progress: Callable = _identity, desc: str = "") -> np.ndarray:
  """Applies jitted `fn(variables, images[batch])` over `images` in fixed-size batches.

  The last batch is padded by repeating its last image and the padding is cut
  from the results. `fn` may return an array or a tuple of arrays; the result
  has the same structure, concatenated along axis 0.
  """
  n = len(images)
  out = []
  for s in progress(range(0, n, batch), desc=desc, total=-(-n // batch)):
    x = images[s:s + batch]
    m = len(x)
    if m < batch:
      x = np.concatenate([x, np.repeat(x[-1:], batch - m, axis=0)])
    out.append(jax.tree.map(lambda a: np.asarray(a)[:m], fn(variables, jnp.asarray(x))))
  if not out:
    return np.zeros((0,))
  return jax.tree.map(lambda *a: np.concatenate(a), *out)


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
  """`f(features [B, h, w, D], bank [k, D]) -> (image_scores [B], maps [B, crop, crop])`, jit-able."""

  def score(features, bank):
    if reweight:    # Eq. 7 needs each patch's nearest bank entry
      s, idx = scoring.patch_scores(features, bank, chunk=chunk)
      img = scoring.reweighted_image_scores(features, s, idx, bank, reweight)
    else:
      s = scoring.patch_distances(features, bank, chunk=chunk)
      img = scoring.image_scores(s)
    return img, scoring.anomaly_maps(s, crop, sigma)
  return score


def make_predict(extract: Callable, crop: int, sigma: float = 4.0, chunk: int = 2048,
                 reweight: int = 0) -> Callable:
  """Jitted `f(variables, bank [k, D], images [B, R, R, 3]) -> (scores [B], maps [B, crop, crop])`.

  Build it once per experiment: the bank and the variables are arguments, so
  one compilation serves every (shift, method) that shares the extractor.
  """
  scorer = make_scorer(crop, sigma, chunk, reweight)
  return jax.jit(lambda v, bank, x: scorer(extract(v, x), bank))


def predict(step: Callable, variables, images: np.ndarray, bank: np.ndarray, batch: int = 16,
            progress: Callable = _identity, desc: str = "score"):
  """Image scores `[N]` and anomaly maps `[N, crop, crop]` for uint8 images `[N, R, R, 3]`.

  `step` is a `make_predict` function.
  """
  bank = jnp.asarray(bank)
  return batched(lambda v, x: step(v, bank, x), variables, images, batch, progress, desc)
