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


def uda_run_step(model: uda.Model, s: uda.Settings, params_template,
                 class_batch: int = 0) -> tuple[Callable, object, dict]:
  """`(step, optimizer, labels)`: `uda.make_step` mapped over runs (classes x seeds), jitted.

  `step(train [R, ...], frozen, opt_state [R, ...], stats, hs [R, b, ...], ht [R, b, ...],
  dom [R, b], mu [R, D]) -> (train, opt_state, aux [R])`: `train` / `frozen` are the flat
  trained / frozen leaves of `{"model", "disc"}` (`uda.param_labels`): runs share the frozen
  tail and the BatchNorm statistics, and differ in what trains. `adapt.class_map` maps it
  (`class_batch` 0 = one vmap, k = groups of k in sequence).
  """
  from flax import traverse_util
  from rodajax import adapt
  step, opt = uda.make_step(model, s, params_template)
  labels = traverse_util.flatten_dict(
      {"model": uda.param_labels(params_template["model"], s.trainable, s.bn_bias),
       "disc": jax.tree.map(lambda _: "train", params_template["disc"])})

  def one(train, frozen, opt_state, stats, hs, ht, dom, mu):
    params = traverse_util.unflatten_dict({**train, **frozen})
    params, opt_state, aux = step(params, opt_state, stats, hs, ht, dom, mu)
    flat = traverse_util.flatten_dict(params)
    return {k: flat[k] for k in train}, opt_state, aux
  return (jax.jit(adapt.class_map(one, (0, None, 0, None, 0, 0, 0, 0), class_batch)), opt,
          labels)


def train_uda_runs(model: uda.Model, run_step, variables: list[dict], hs: list[np.ndarray],
                   ht: list[np.ndarray], dominant: list[np.ndarray], s: uda.Settings,
                   keys: list[jax.Array], embed_fn: Callable):
  """`train_uda` for R runs (classes x seeds) at once: one mapped step per iteration.

  Run r draws exactly `train_uda`'s batches (its key, `uda.batch_indices`) and starts from the
  same discriminator; the runs share the frozen tail (`variables[r]` differ only in what
  trains: the head's initialisation per seed). Every run needs at least `s.batch` source and
  target images (or all the same number). `run_step` is `uda_run_step(...)`.
  Returns per-run lists `(variables, mu, info)` as `train_uda`.
  """
  from flax import traverse_util
  step, opt, labels = run_step
  r = len(variables)
  if not r == len(hs) == len(ht) == len(dominant) == len(keys):
    raise ValueError("train_uda_runs needs one variables/hs/ht/dominant/key per run")
  for name, arrs in (("source", hs), ("target", ht)):
    n = [len(a) for a in arrs]
    if len(set(n)) > 1 and min(n) < s.batch:
      raise ValueError(f"runs trained together have {min(n)}..{max(n)} {name} images; each needs "
                       f"uda.batch={s.batch} (or all the same number): lower uda.batch or train "
                       "them one by one")
  z0 = [embed(embed_fn, v, h, model.out_dim) for v, h in zip(variables, hs)]
  mu = jnp.asarray(np.stack([z.mean(0) for z in z0]))
  trains, frozen = [], None
  for v, k in zip(variables, keys):
    k_disc, _ = jax.random.split(k)
    flat = traverse_util.flatten_dict(uda.init_params(model, v, k_disc))
    trains.append({q: x for q, x in flat.items() if labels[q] == "train"})
    frozen = frozen or {q: x for q, x in flat.items() if labels[q] != "train"}
  train = jax.tree.map(lambda *a: jnp.stack(a), *trains)
  opt_state = jax.vmap(lambda t: opt.init(traverse_util.unflatten_dict({**t, **frozen})))(train)
  stats = variables[0]["batch_stats"]
  idx = []
  for h, t, d, k in zip(hs, ht, dominant, keys):
    k_loop = jax.random.split(k)[1]
    ks = jax.vmap(lambda i: jax.random.fold_in(k_loop, i))(jnp.arange(s.steps))
    idx.append(jax.device_get(jax.vmap(
        lambda kk: uda.batch_indices(kk, len(h), d, s.batch, s.alignment))(ks)))
  hist = []
  for i in range(s.steps):
    batch = [(h[a[0][i]], t[a[1][i]], d[a[1][i]]) for h, t, d, a in zip(hs, ht, dominant, idx)]
    train, opt_state, aux = step(train, frozen, opt_state, stats,
                                 *(jnp.asarray(np.stack(x)) for x in zip(*batch)), mu)
    hist.append(aux)
  hist = jax.tree.map(lambda *a: np.stack(a), *jax.device_get(hist))   # [steps, R]
  out = []
  for j in range(r):
    loss = hist["loss"][:, j]
    bad = np.flatnonzero(~np.isfinite(loss))
    if len(bad):
      raise FloatingPointError(f"run {j}: non-finite UDA loss at step {int(bad[0])}; lower uda.lr")
    params = traverse_util.unflatten_dict({**{q: x[j] for q, x in train.items()}, **frozen})
    v = {"params": params["model"], "batch_stats": stats}
    z1 = embed(embed_fn, v, hs[j], model.out_dim)
    info = uda.training_info({k: a[:, j] for k, a in hist.items()}, float(z0[j].var(0).sum()),
                             float(z1.var(0).sum()))
    out.append((v, np.asarray(mu[j]), info))
  return out
