"""Test-time adaptation of the backbone's BatchNorm affine parameters (RoDA, Alg. 1).

Only BatchNorm scale and bias are trained (an `optax.multi_transform` whose
"frozen" branch is `set_to_zero`); every other parameter stays bit-identical.
Per step: a minibatch of target images, its views (`augment.views`), patch
features with the current parameters, a random subset of `patches` target
patches, then the method's loss against the fixed source memory bank.

Methods (`config.adapt.methods`):
  none           PatchCore, no adaptation
  bn_stats       BatchNorm running statistics re-estimated on the target
                 adaptation images, no gradient step
  moment         TTT++ moment matching against the source feature mean/cov
  kl             TTAC-style KL between Gaussians fitted to target and source
  hungarian      one-to-one assignment (scipy) of `hungarian_patches` target
                 patches to as many randomly drawn bank entries
  sinkhorn       continuous OT: sum gamma * C
  discrete       discretised plan (Eq. 6), one view per image
  discrete_copy  discretised plan, `views` identical copies per image
  roda           discretised plan, `views` rotated / flipped views (RoDA)

BatchNorm statistics (`config.adapt.bn_mode`), the same while adapting and at
test time: "source" keeps the source running statistics; "target_stats"
re-estimates them once on the target adaptation images (as `bn_stats` does)
and then trains the affine parameters on top; "target" uses each batch's own
statistics (test scores then depend on the test batch).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from rodajax import augment, losses, transport

# method -> (loss, number of views (None = config.adapt.views), augmentation mode)
METHODS = {
    "none": (None, 1, "copy"),
    "bn_stats": (None, 1, "copy"),
    "moment": ("moment", 1, "copy"),
    "kl": ("kl", 1, "copy"),
    "hungarian": ("hungarian", 1, "copy"),
    "sinkhorn": ("continuous", 1, "copy"),
    "discrete": ("discrete", 1, "copy"),
    "discrete_copy": ("discrete", None, "copy"),
    "roda": ("discrete", None, "dihedral"),
}


BN_MODES = ("source", "target_stats", "target")


def check_method(name: str) -> None:
  if name not in METHODS:
    raise ValueError(f"unknown adaptation method {name!r}; known: {', '.join(METHODS)}")


def bn_labels(params) -> Any:
  """'bn' for BatchNorm scale/bias (modules that own a `scale`), 'frozen' elsewhere."""
  flat = traverse_util.flatten_dict(params)
  bn_modules = {k[:-1] for k in flat if k[-1] == "scale"}
  return traverse_util.unflatten_dict(
      {k: ("bn" if k[:-1] in bn_modules else "frozen") for k in flat})


def split_bn(params):
  """Flat dicts (BatchNorm affine, everything else) of a params tree."""
  flat = traverse_util.flatten_dict(params)
  labels = traverse_util.flatten_dict(bn_labels(params))
  return ({k: v for k, v in flat.items() if labels[k] == "bn"},
          {k: v for k, v in flat.items() if labels[k] != "bn"})


def make_optimizer(params, learning_rate: float, name: str = "adam") -> optax.GradientTransformation:
  """Optax optimiser that updates BatchNorm affine parameters only."""
  opt = {"adam": optax.adam, "sgd": optax.sgd}[name](learning_rate)
  return optax.multi_transform({"bn": opt, "frozen": optax.set_to_zero()}, bn_labels(params))


def ot_problem(z: jax.Array, key: jax.Array, bank: jax.Array, cfg):
  """The step's transport problem: `cfg.patches` target patches drawn from `z [N, D]`
  (without replacement) and their Sinkhorn potentials against the bank (not
  differentiated). Returns `(zs [n, D], pick [n], potentials)`."""
  n = min(cfg.patches, z.shape[0])
  pick = jax.random.choice(key, z.shape[0], (n,), replace=False)
  zs = z[pick]
  pot = transport.sinkhorn_potentials(jax.lax.stop_gradient(zs), bank, cfg.epsilon, True,
                                      cfg.sinkhorn_threshold, cfg.sinkhorn_max_iterations)
  return zs, pick, pot


def method_loss(kind: str, z: jax.Array, key: jax.Array, bank: jax.Array, src_mean, src_cov,
                cfg) -> tuple[jax.Array, dict]:
  """The alignment loss of `kind` on target patch features `z [N, D]` (one step's)."""
  k_sub, k_bank = jax.random.split(key)
  aux = {}
  if kind == "moment":
    return losses.moment_matching(z, src_mean, src_cov), aux
  if kind == "kl":
    return losses.gaussian_kl(z, src_mean, src_cov, cfg.kl_reg), aux
  if kind == "hungarian":
    n = min(cfg.hungarian_patches, z.shape[0], bank.shape[0])
    zs = z[jax.random.choice(k_sub, z.shape[0], (n,), replace=False)]
    bs = bank[jax.random.choice(k_bank, bank.shape[0], (n,), replace=False)]
    return transport.hungarian_loss(zs, bs), aux
  zs, _, pot = ot_problem(z, k_sub, bank, cfg)
  aux = {"converged": pot.converged, "n_iters": pot.n_iters}
  if kind == "continuous":
    return transport.continuous_loss(zs, bank, pot), aux
  row, col = transport.plan_argmaxes(jax.lax.stop_gradient(zs), bank, pot.f, pot.g)
  return transport.discrete_loss(zs, bank, row, col), aux


_STEP_KEYS = ("views", "patches", "epsilon", "sinkhorn_threshold", "sinkhorn_max_iterations",
              "kl_reg", "hungarian_patches", "lr", "optimizer")


def make_step(method: str, extract: Callable, params, cfg) -> tuple[Callable, Any]:
  """`(step, optimizer)`: the jitted BN-only update of `method` and its optimiser.

  `step(params, opt_state, batch_stats, images [B, R, R, 3] uint8, key, bank [k, D],
  src_mean [D], src_cov [D, D]) -> (params, opt_state, loss, aux)`. The bank and the
  source statistics are arguments, so one compilation serves every shift and
  category that share the extractor and config (see `cached_step`).
  """
  kind, n_views, mode = METHODS[method]
  n_views = cfg.views if n_views is None else n_views
  optimizer = make_optimizer(params, cfg.lr, cfg.optimizer)

  def loss_fn(bn_flat, frozen_flat, batch_stats, images, key, bank, src_mean, src_cov):
    params = traverse_util.unflatten_dict({**bn_flat, **frozen_flat})
    k_view, k_loss = jax.random.split(key)
    x = augment.views(images, k_view, n_views, mode)
    z = extract({"params": params, "batch_stats": batch_stats}, x)
    return method_loss(kind, z.reshape(-1, z.shape[-1]), k_loss, bank, src_mean, src_cov, cfg)

  @jax.jit
  def step(params, opt_state, batch_stats, images, key, bank, src_mean, src_cov):
    # Differentiate w.r.t. the BatchNorm affine parameters only: XLA then drops
    # every convolution-kernel gradient (3-4x less work than a full backward).
    bn_flat, frozen_flat = split_bn(params)
    (loss, aux), g_bn = jax.value_and_grad(loss_fn, has_aux=True)(
        bn_flat, frozen_flat, batch_stats, images, key, bank, src_mean, src_cov)
    grads = traverse_util.unflatten_dict(
        {**g_bn, **jax.tree.map(jnp.zeros_like, frozen_flat)})
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  return step, optimizer


_STEP_CACHE: dict = {}


def cached_step(method: str, extract: Callable, params, cfg) -> tuple[Callable, Any]:
  """`make_step`, memoised on (method, extractor, the config values the step reads)."""
  key = (method, extract, jax.tree.structure(params),
         tuple(cfg.get(k) for k in _STEP_KEYS))
  if key not in _STEP_CACHE:
    if len(_STEP_CACHE) > 32:
      _STEP_CACHE.clear()
    _STEP_CACHE[key] = make_step(method, extract, params, cfg)
  return _STEP_CACHE[key]


def target_batch_stats(module, variables, images: np.ndarray, crop: int, batch: int):
  """BatchNorm statistics of the target images: running stats replaced by their batch averages."""
  from rodajax.features import crop_and_normalise
  m = module.bn_momentum

  @jax.jit
  def stats(x):
    _, upd = module.apply(variables, crop_and_normalise(x, crop), train=True, mutable=["batch_stats"])
    # Flax: new = m * old + (1 - m) * batch  ->  batch = (new - m * old) / (1 - m)
    return jax.tree.map(lambda new, old: (new - m * old) / (1 - m),
                        upd["batch_stats"], variables["batch_stats"])

  chunks = [stats(jnp.asarray(images[s:s + batch])) for s in range(0, len(images), batch)]
  sizes = [len(images[s:s + batch]) for s in range(0, len(images), batch)]
  return jax.tree.map(lambda *a: sum(w * x for w, x in zip(sizes, a)) / sum(sizes), *chunks)


def run(method: str, config, module, variables, make_extractor: Callable, bank,
        adapt_images: np.ndarray, key: jax.Array, progress: Callable = None):
  """Adapts `variables` with `method` on uint8 target images; returns (variables, info).

  Args:
    make_extractor: `train -> f(variables, images) -> [B, h, w, D]`.
    bank: a `patchcore.MemoryBank` (bank and source feature statistics).
  """
  check_method(method)
  cfg = config.adapt
  info: dict[str, Any] = {"bn_mode": cfg.bn_mode}
  if method == "none":
    return variables, info
  if method == "bn_stats":
    bs = target_batch_stats(module, variables, adapt_images, config.data.crop, config.batch_size)
    return {"params": variables["params"], "batch_stats": bs}, info
  if len(adapt_images) < 1:
    raise ValueError("the adaptation part is empty; raise config.shift.adapt_fraction")
  batch = cfg.batch_images
  if len(adapt_images) < batch:
    raise ValueError(f"the adaptation part has {len(adapt_images)} images, fewer than "
                     f"config.adapt.batch_images={batch}; lower it or raise "
                     "config.shift.adapt_fraction")
  extract = make_extractor(cfg.bn_mode == "target")
  params, batch_stats = variables["params"], variables["batch_stats"]
  if cfg.bn_mode == "target_stats":
    batch_stats = target_batch_stats(module, variables, adapt_images, config.data.crop,
                                     config.batch_size)
  step, optimizer = cached_step(method, extract, params, cfg)
  opt_state = optimizer.init(params)
  statics = (jnp.asarray(bank.bank), jnp.asarray(bank.feature_mean), jnp.asarray(bank.feature_cov))
  rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2 ** 31 - 1)))
  loss_hist, conv, iters = [], [], []
  it = range(cfg.steps)
  if progress is not None:
    it = progress(it, desc=f"adapt {method}")
  for s in it:
    idx = rng.choice(len(adapt_images), batch, replace=False)
    new_params, new_state, loss, aux = step(params, opt_state, batch_stats,
                                            jnp.asarray(adapt_images[idx]), jax.random.fold_in(key, s),
                                            *statics)
    loss = float(loss)
    if not np.isfinite(loss):
      info["error"] = f"non-finite loss at step {s}; kept the parameters of step {s - 1}"
      break
    params, opt_state = new_params, new_state
    loss_hist.append(loss)
    if "converged" in aux:
      conv.append(bool(aux["converged"]))
      iters.append(int(aux["n_iters"]))
  info.update({"steps": len(loss_hist), "loss_first": loss_hist[0] if loss_hist else None,
               "loss_last": loss_hist[-1] if loss_hist else None})
  if conv:
    info["sinkhorn_converged_frac"] = float(np.mean(conv))
    info["sinkhorn_iters_mean"] = float(np.mean(iters))
    if not all(conv):
      info["warning"] = (f"Sinkhorn reached max_iterations={cfg.sinkhorn_max_iterations} in "
                         f"{conv.count(False)} of {len(conv)} steps; raise adapt.epsilon or "
                         "adapt.sinkhorn_max_iterations")
  if method == "hungarian":
    info["note"] = (f"Hungarian on {cfg.hungarian_patches} subsampled target patches x as many "
                    "random bank entries per step (the full problem is too large)")
  return {"params": params, "batch_stats": batch_stats}, info


def eval_extractor(config, make_extractor: Callable, method: str):
  """The extractor for evaluation: batch statistics in 'target' BN mode, else source."""
  target = config.adapt.bn_mode == "target" and method not in ("none", "bn_stats")
  return make_extractor(target)


def assignment_analysis(method: str, extract: Callable, variables, images: np.ndarray,
                        masks: np.ndarray, key: jax.Array, bank: jax.Array, cfg) -> dict:
  """Paper Fig. 5a: how much of the OT loss falls on anomalous target patches.

  Runs the first step's transport problem (source parameters) of `method` on
  each minibatch of `images` (uint8 `[N, R, R, 3]`) with ground-truth `masks`
  (`[N, crop, crop]`, already centre-cropped); masks follow the images through
  the same views. Counts, summed over minibatches: target patches, anomalous
  ones, anomalous ones that some bank entry picks as its column argmax, and
  the anomalous share of the loss weight (continuous plan: the row marginal,
  uniform, so the share equals the anomalous fraction; discrete: the counted
  pairs of `transport.assignment_weights`).
  """
  from rodajax.features import patch_labels
  kind, n_views, mode = METHODS[method]
  if kind not in ("continuous", "discrete"):
    raise ValueError(f"assignment analysis needs an OT method, not {method!r}; use sinkhorn, "
                     "discrete, discrete_copy or roda")
  n_views = cfg.views if n_views is None else n_views
  bank = jnp.asarray(bank)
  tot = {"patches": 0, "anomalous": 0, "anomalous_picked": 0, "weight": 0.0, "anomalous_weight": 0.0}
  batch = min(cfg.batch_images, len(images))
  for s in range(0, len(images) - batch + 1, batch):
    k = jax.random.fold_in(key, s)
    k_view, k_sub = jax.random.split(k)
    x = augment.views(jnp.asarray(images[s:s + batch]), k_view, n_views, mode)
    mv = augment.views(jnp.asarray(masks[s:s + batch])[..., None], k_view, n_views, mode)[..., 0]
    z = extract(variables, x)
    lab = patch_labels(mv, z.shape[1:3]).reshape(-1)
    z = z.reshape(-1, z.shape[-1])
    zs, pick, pot = ot_problem(z, k_sub, bank, cfg)
    n, lab = zs.shape[0], np.asarray(lab[pick])
    if kind == "continuous":
      w = np.full(n, 1.0 / n)
      picked = np.zeros(n, bool)
    else:
      row, col = transport.plan_argmaxes(zs, bank, pot.f, pot.g)
      w = np.asarray(transport.assignment_weights(row, col))
      picked = np.zeros(n, bool)
      picked[np.asarray(col)] = True
    tot["patches"] += n
    tot["anomalous"] += int(lab.sum())
    tot["anomalous_picked"] += int((picked & lab).sum())
    tot["weight"] += float(w.sum())
    tot["anomalous_weight"] += float(w[lab].sum())
  return {"n_patches": tot["patches"], "n_anomalous": tot["anomalous"],
          "anomalous_fraction": 100.0 * tot["anomalous"] / max(tot["patches"], 1),
          "anomalous_picked_by_bank": None if kind == "continuous" else tot["anomalous_picked"],
          "anomalous_loss_share": 100.0 * tot["anomalous_weight"] / max(tot["weight"], 1e-12)}
