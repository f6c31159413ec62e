"""The adaptation loop around `rodajax.adapt`'s pure step: Algorithm 1 plus a safeguard.

Shared by `experiments.train` (tables) and the `fit -> adapt -> predict` tool.

Per call of `run` (one method, one target domain):
1. The adaptation images are split (seeded) into a training part and, with the
   safeguard on, a held-out part (`adapt.holdout_fraction`).
2. BatchNorm statistics (`adapt.bn_mode`): kept (source), replaced by those of
   the training part (target_stats), mixed with an N-sample source prior
   (prior, N = `adapt.bn_prior`).
3. Algorithm 1: `adapt.epochs` passes over the training part in minibatches of
   `adapt.batch_images` (a shuffled order per pass; the last, short minibatch
   is filled with images from the start of the order so one compilation serves
   all), one jitted step each: ceil(n_train / batch) x epochs steps.
   Metrics stay on the device and are fetched once, after the loop.
4. Safeguard (label-free, beyond the paper): a criterion
   (`rodajax.adapt.holdout_criterion`) on the held-out images for the source
   model and after every step; the step with the lowest criterion is kept if
   it beats the source model by the relative `adapt.safeguard_margin`, else the
   source model is kept. The decision is returned in `info["safeguard"]`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli
from rodajax import adapt, augment, features

SETTING_KEYS = ("views", "target_patches", "bank_patches", "epsilon", "sinkhorn_threshold",
                "sinkhorn_max_iterations", "online_above", "chunk", "kl_reg",
                "hungarian_patches")


def settings(cfg_adapt, method: str) -> adapt.Settings:
  """`adapt.Settings` of `method` from the `config.adapt` block."""
  return adapt.Settings(method=method, **{k: cfg_adapt[k] for k in SETTING_KEYS})


@dataclasses.dataclass
class Functions:
  """The jitted functions of one method, built once per experiment and reused."""
  settings: adapt.Settings
  optimizer: Any
  step: Callable | None         # (state, source, images, key) -> (state, metrics)
  criterion: Callable           # (variables, source, images, key) -> {"transport", "nn"}
  moments: Callable             # (variables, images) -> per-layer {"mean", "var"}


def build(method: str, cfg_adapt, module, extract: Callable, params, crop: int,
          prepare: Callable | None = None, views: Callable = augment.views) -> Functions:
  """Jits the step, the held-out criterion and the BN moments of `method`.

  `prepare(images) -> module input` (default: centre crop + ImageNet
  normalisation); point clouds pass `points.encoder_input` and
  `augment.point_views`.
  """
  s = settings(cfg_adapt, method)
  optimizer = adapt.make_optimizer(params, cfg_adapt.lr, cfg_adapt.optimizer)
  step = (jax.jit(adapt.make_step(s, extract, optimizer, views))
          if adapt.is_gradient_method(method) else None)
  prepare = prepare or (lambda images: features.crop_and_normalise(images, crop))

  def criterion(variables, source, images, key):
    z = extract(variables, images)
    return adapt.holdout_criterion(z.reshape(-1, z.shape[-1]), source, key, s)

  def moments(variables, images):
    return adapt.batch_moments(module, variables, prepare(images))
  return Functions(s, optimizer, step, jax.jit(criterion), jax.jit(moments))


def target_statistics(moments: Callable, variables, images: np.ndarray, batch: int):
  """BatchNorm statistics of `images` (uint8), in chunks of `batch` images.

  Chunk moments are pooled as a mixture (variance = E[var_c + mean_c^2] - mean^2).
  That is exact for the first BatchNorm layer; deeper layers see features that
  each chunk normalised with its own statistics (train-mode BatchNorm), so they
  are exact only in one chunk: keep `batch` >= the number of adaptation images
  (`config.adapt.stats_batch`, 64 by default) where memory allows.
  """
  parts, sizes = [], []
  for s in range(0, len(images), batch):
    parts.append(moments(variables, jnp.asarray(images[s:s + batch])))
    sizes.append(len(images[s:s + batch]))
  w = np.asarray(sizes, np.float64) / sum(sizes)

  def pool(*layers):
    mean = sum(wi * l["mean"] for wi, l in zip(w, layers))
    sq = sum(wi * (l["var"] + l["mean"] ** 2) for wi, l in zip(w, layers))
    return {"mean": mean, "var": jnp.maximum(sq - mean ** 2, 0.0)}
  is_layer = lambda x: isinstance(x, dict) and set(x) == {"mean", "var"}
  return jax.tree.map(pool, *parts, is_leaf=is_layer)


def split_holdout(n: int, fraction: float, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """Seeded `(train_idx, holdout_idx)` of n adaptation images; at least one of each."""
  if n < 2:
    raise cli.UserError(f"the safeguard needs at least 2 adaptation images (1 held out), got {n}; "
                        "give more target images (config.shift.adapt_fraction in experiments) "
                        "or set config.adapt.safeguard=False")
  k = int(np.clip(round(fraction * n), 1, n - 1))
  perm = np.asarray(jax.random.permutation(key, n))
  return np.sort(perm[k:]), np.sort(perm[:k])


def minibatches(n: int, batch: int, epochs: int, key: jax.Array) -> list[np.ndarray]:
  """Alg. 1's minibatches: per pass a shuffled order cut into ceil(n / batch) batches.

  The last batch of a pass is filled up to `batch` with the first images of
  that pass's order (a fixed shape for jit; n < batch repeats images).
  """
  out = []
  for e in range(epochs):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, e), n))
    for s in range(0, n, batch):
      idx = order[s:s + batch]
      if len(idx) < batch:
        idx = np.concatenate([idx, np.resize(order, batch - len(idx))])
      out.append(idx)
  return out


def decide(criteria: list[float], margin: float) -> int:
  """Safeguard rule: index of the kept candidate (0 = source parameters).

  criteria[0] is the source model's held-out criterion, criteria[1] the one
  with the adapted statistics before any step, criteria[1 + s] the one after
  step s. The best candidate is kept only if it is below (1 - margin) x the
  source's; otherwise 0.
  """
  if len(criteria) < 2 or not np.isfinite(criteria[0]):
    return 0
  adapted = np.asarray(criteria[1:], np.float64)
  adapted = np.where(np.isfinite(adapted), adapted, np.inf)
  best = int(np.argmin(adapted)) + 1
  return best if criteria[best] < (1.0 - margin) * criteria[0] else 0


def run(method: str, fns: Functions, cfg_adapt, variables: dict, source: adapt.Source,
        images: np.ndarray, key: jax.Array,
        progress: Callable | None = None) -> tuple[dict, dict, dict]:
  """Adapts `variables` with `method` on uint8 target images `[n, R, R, 3]`.

  Returns:
    `(kept, last, info)`: the variables the safeguard keeps, the variables
    after the last step (equal to `kept` without the safeguard), and a
    JSON-able record of what happened (steps, per-step metrics, decision).
  """
  adapt.check_method(method)
  info: dict[str, Any] = {"bn_mode": cfg_adapt.bn_mode}
  if method == "none":
    return variables, variables, info
  if len(images) < 1:
    raise cli.UserError("no adaptation images; give target images (config.shift.adapt_fraction "
                        "in experiments)")
  k_split, k_loop, k_crit = jax.random.split(key, 3)
  guard = bool(cfg_adapt.safeguard)
  if guard:
    train_idx, hold_idx = split_holdout(len(images), cfg_adapt.holdout_fraction, k_split)
  else:
    train_idx, hold_idx = np.arange(len(images)), np.zeros(0, np.int64)
  train = images[train_idx]
  info.update({"n_adapt_train": len(train_idx), "n_holdout": len(hold_idx)})

  source_stats = variables["batch_stats"]
  stats, mode = source_stats, cfg_adapt.bn_mode
  if method == "bn_stats" or mode != "source":
    t_stats = target_statistics(fns.moments, variables, train, cfg_adapt.stats_batch)
    mode = "target_stats" if method == "bn_stats" else mode
    stats = (t_stats if mode == "target_stats" else
             adapt.mix_batch_stats(source_stats, t_stats, len(train), cfg_adapt.bn_prior))
  info["bn_stats_used"] = mode
  start = {"params": variables["params"], "batch_stats": stats}

  # Candidates keep only their BatchNorm affine parameters (the rest never changes):
  # memory stays small however many steps a pass has.
  candidates = [adapt.split_bn(start["params"])[0]]
  step_metrics = []
  if fns.step is not None:
    state = adapt.init_state(start, fns.optimizer)
    batches = minibatches(len(train), min(cfg_adapt.batch_images, len(train)), cfg_adapt.epochs,
                          k_loop)
    it = progress(batches, desc=f"adapt {method}") if progress else batches
    for s, idx in enumerate(it):
      state, m = fns.step(state, source, jnp.asarray(train[idx]), jax.random.fold_in(k_loop, s))
      step_metrics.append(m)
      candidates.append(adapt.split_bn(state.params)[0])
    step_metrics = jax.device_get(step_metrics)  # one transfer for the whole pass
    info["steps"] = len(step_metrics)
    info["step_metrics"] = [{k: (v.item() if hasattr(v, "item") else v) for k, v in m.items()}
                            for m in step_metrics]
    finite = [bool(m["finite"]) for m in step_metrics]
    if not all(finite):
      info["error"] = (f"non-finite loss at step {finite.index(False)}; the parameters of the "
                       "last finite step were kept")
    conv = [bool(m["sinkhorn_converged"]) for m in step_metrics if "sinkhorn_converged" in m]
    if conv and not all(conv):
      info["warning"] = (f"Sinkhorn reached max_iterations={cfg_adapt.sinkhorn_max_iterations} in "
                         f"{conv.count(False)} of {len(conv)} steps; raise adapt.epsilon or "
                         "adapt.sinkhorn_max_iterations")
    losses = [float(m["loss"]) for m in info["step_metrics"]]
    info.update({"loss_first": losses[0], "loss_last": losses[-1]})
  else:
    info["steps"] = 0

  def variables_of(bn_flat):
    return {"params": adapt.with_bn(variables["params"], bn_flat), "batch_stats": stats}
  last = variables_of(candidates[-1])
  if not guard:
    return last, last, info

  hold = jnp.asarray(images[hold_idx])
  base = fns.criterion(variables, source, hold, k_crit)
  # With the source statistics the first candidate is the source model: no second evaluation.
  crits = jax.device_get([base] + [base if i == 0 and stats is source_stats
                                   else fns.criterion(variables_of(v), source, hold, k_crit)
                                   for i, v in enumerate(candidates)])
  # crits[0]: the source model; crits[1]: statistics only (before any step);
  # crits[1 + s]: after step s.
  name = cfg_adapt.safeguard_criterion
  values = [float(c[name]) for c in crits]
  chosen = decide(values, cfg_adapt.safeguard_margin)
  kept = variables if chosen == 0 else variables_of(candidates[chosen - 1])
  info["safeguard"] = {
      "criterion": name, "margin": cfg_adapt.safeguard_margin,
      "source": values[0], "candidates": values[1:],
      "other_criterion": {k: [float(c[k]) for c in crits] for k in crits[0] if k != name},
      "kept": "source" if chosen == 0 else ("statistics" if chosen == 1 else f"step {chosen - 1}"),
      "adapted": chosen != 0}
  return kept, last, info
