"""The host loops that drive the library's pure, jitted functions over data.

`rodajax/` holds no loops over minibatches or optimisation steps (a test greps
for it): the data order, batching, padding and progress bars live here, the
math (extract, score, corrupt, step) is passed in already jitted, built once
per experiment.
"""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from rodajax import corruptions, uda


def _identity(it: Iterable, **_) -> Iterable:
  return it


def batched(fn: Callable, variables, images: np.ndarray, batch: int,
            progress: Callable = _identity, desc: str = "") -> np.ndarray:
  """Applies jitted `fn(variables, images[batch])` over `images` in fixed-size batches.

  The last batch is padded by repeating its last image and the padding is cut
  from the results (one compilation serves every batch). `fn` may return an
  array or a tuple of arrays; the result has the same structure, concatenated
  along axis 0.
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


def predict(step: Callable, variables, images: np.ndarray, bank, batch: int = 16,
            progress: Callable = _identity, desc: str = "score", valid=None):
  """Image scores `[N]` and anomaly maps `[N, crop, crop]` for uint8 images `[N, R, R, 3]`.

  `step` is a `rodajax.patchcore.make_predict` function. `bank` may be a
  sharded array (`experiments.placement.shard_bank`, with its `valid` mask);
  it is used where it lies.
  """
  bank = bank if isinstance(bank, jax.Array) else jnp.asarray(bank)
  if valid is None:
    return batched(lambda v, x: step(v, bank, x), variables, images, batch, progress, desc)
  return batched(lambda v, x: step(v, bank, x, valid), variables, images, batch, progress, desc)


def corrupt(name: str, images: np.ndarray, severity: int, key: jax.Array,
            batch: int = 16) -> np.ndarray:
  """Corrupts uint8 images `[N, H, W, 3]` in batches (batch i uses `fold_in(key, i)`).

  Returns uint8 (truncated, as ImageNet-C). The draw depends on `batch`.
  """
  corruptions.check(name, severity)
  out = []
  for i, s in enumerate(range(0, len(images), batch)):
    y = corruptions.corrupt(jnp.asarray(images[s:s + batch]), name, int(severity),
                            jax.random.fold_in(key, i))
    out.append(np.asarray(y).astype(np.uint8))
  return np.concatenate(out)


def embed(embed_fn: Callable, variables, h: np.ndarray, out_dim: int,
          batch: int = 64) -> np.ndarray:
  """f(x) `[N, out_dim]` of UDA trunk features `h [N, ...]` with jitted `uda.make_embed`."""
  if len(h) == 0:
    return np.zeros((0, out_dim), np.float32)
  return np.concatenate([np.asarray(embed_fn(variables, jnp.asarray(h[i:i + batch])))
                         for i in range(0, len(h), batch)])


def train_uda(model: uda.Model, fns: tuple[Callable, Callable, object], variables,
              hs: np.ndarray, ht: np.ndarray, dominant: np.ndarray, s: uda.Settings,
              key: jax.Array, progress: Callable | None = None):
  """Trains UDA's f for `s.steps` Adam steps; returns `(variables, mu, info)`.

  Args:
    fns: `(step, embed, optimizer)`: the jitted `uda.make_step` step, the
      jitted `uda.make_embed` and the step's optimiser, built once per
      (model, settings).
    hs: source trunk features `[N_s, ...]`; ht: target train trunk features
      `[N_t, ...]`; dominant: `[N_t]` bool, the set D aligned with the source
      (dominant cluster, few-shot labels, oracle normals, or all).
  Step metrics stay on the device and are fetched once, after the loop.
  """
  if len(ht) != len(dominant):
    raise ValueError(f"{len(ht)} target features but {len(dominant)} dominant flags")
  step, embed_fn, opt = fns
  z0 = embed(embed_fn, variables, hs, model.out_dim)
  mu = jnp.asarray(z0.mean(0))
  k_disc, k_loop = jax.random.split(key)
  params = uda.init_params(model, variables, k_disc)
  opt_state = opt.init(params)
  stats = variables["batch_stats"]
  # Every step's batch indices in one draw (step i uses fold_in(k_loop, i)), one transfer.
  keys = jax.vmap(lambda i: jax.random.fold_in(k_loop, i))(jnp.arange(s.steps))
  idx_s, idx_t = jax.device_get(jax.vmap(
      lambda k: uda.batch_indices(k, len(hs), dominant, s.batch, s.alignment))(keys))
  hist = []
  it = range(s.steps) if progress is None else progress(range(s.steps), desc="uda", leave=False)
  for i in it:
    i_s, i_t = idx_s[i], idx_t[i]
    params, opt_state, aux = step(params, opt_state, stats, jnp.asarray(hs[i_s]),
                                  jnp.asarray(ht[i_t]), jnp.asarray(dominant[i_t]), mu)
    hist.append(aux)
  hist = jax.tree.map(lambda *a: np.asarray(a), *jax.device_get(hist))
  bad = np.flatnonzero(~np.isfinite(hist["loss"]))
  if len(bad):
    raise FloatingPointError(f"non-finite UDA loss at step {int(bad[0])}; lower uda.lr")
  out = {"params": params["model"], "batch_stats": stats}
  z1 = embed(embed_fn, out, hs, model.out_dim)
  info = uda.training_info(hist, float(z0.var(0).sum()), float(z1.var(0).sum()))
  return out, np.asarray(mu), info
