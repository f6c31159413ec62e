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
from rodajax import adapt, augment, features, scoring

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
          prepare: Callable | None = None, views: Callable = augment.views,
          classes: bool = False) -> Functions:
  """Jits the step, the held-out criterion and the BN moments of `method`.

  `prepare(images) -> module input` (default: centre crop + ImageNet
  normalisation); point clouds pass `points.encoder_input` and
  `augment.point_views`. `classes=True` vmaps each function across a leading
  class axis of every argument (state, source, images, key) before jitting:
  the functions of `run_classes`.
  """
  s = settings(cfg_adapt, method)
  optimizer = adapt.make_optimizer(params, cfg_adapt.lr, cfg_adapt.optimizer)
  jit, step = (lambda f, n_args: jax.jit(f)), None
  if classes:   # variables as adapt.stack_classes: BN leaves per class, frozen weights shared
    v_axes = {"params": adapt.class_axes(params), "batch_stats": 0}
    s_axes = adapt.AdaptState(v_axes["params"], 0, 0)
    jit = lambda f, n_args: jax.jit(jax.vmap(f, in_axes=(v_axes,) + (0,) * (n_args - 1)))
    if adapt.is_gradient_method(method):
      step = jax.jit(jax.vmap(adapt.make_step(s, extract, optimizer, views),
                              in_axes=(s_axes, 0, 0, 0), out_axes=(s_axes, 0)))
  elif adapt.is_gradient_method(method):
    step = jax.jit(adapt.make_step(s, extract, optimizer, views))
  prepare = prepare or (lambda images: features.crop_and_normalise(images, crop))

  def criterion(variables, source, images, key):
    z = extract(variables, images)
    return adapt.holdout_criterion(z.reshape(-1, z.shape[-1]), source, key, s)

  def moments(variables, images):
    return adapt.batch_moments(module, variables, prepare(images))
  return Functions(s, optimizer, step, jit(criterion, 4), jit(moments, 2))


def target_statistics(moments: Callable, variables, images: np.ndarray, batch: int,
                      axis: int = 0):
  """BatchNorm statistics of `images` (uint8), in chunks of `batch` images along `axis`.

  `axis=1` for class-stacked images `[C, n, ...]` and `build(classes=True)` moments.

  Chunk moments are pooled as a mixture (variance = E[var_c + mean_c^2] - mean^2).
  That is exact for the first BatchNorm layer; deeper layers see features that
  each chunk normalised with its own statistics (train-mode BatchNorm), so they
  are exact only in one chunk: keep `batch` >= the number of adaptation images
  (`config.adapt.stats_batch`, 64 by default) where memory allows.
  """
  parts, sizes = [], []
  n = images.shape[axis]
  for s in range(0, n, batch):
    chunk = np.take(images, np.arange(s, min(s + batch, n)), axis=axis)
    parts.append(moments(variables, jnp.asarray(chunk)))
    sizes.append(chunk.shape[axis])
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


def steps_info(step_metrics: list[dict], cfg_adapt) -> dict:
  """The record of a pass from its per-step metrics (host values): steps, errors, losses."""
  info: dict[str, Any] = {"steps": len(step_metrics)}
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
  return info


def safeguard_info(crits: list[dict], cfg_adapt) -> tuple[int, dict]:
  """`(chosen, record)` from the held-out criteria of the source model and every candidate.

  crits[0]: the source model; crits[1]: statistics only (before any step);
  crits[1 + s]: after step s. `chosen` indexes crits (0 = keep the source).
  """
  name = cfg_adapt.safeguard_criterion
  values = [float(c[name]) for c in crits]
  chosen = decide(values, cfg_adapt.safeguard_margin)
  return chosen, {
      "criterion": name, "margin": cfg_adapt.safeguard_margin,
      "source": values[0], "candidates": values[1:],
      "other_criterion": {k: [float(c[k]) for c in crits] for k in crits[0] if k != name},
      "kept": "source" if chosen == 0 else ("statistics" if chosen == 1 else f"step {chosen - 1}"),
      "adapted": chosen != 0}


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
    info.update(steps_info(jax.device_get(step_metrics), cfg_adapt))  # one transfer per pass
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
  chosen, info["safeguard"] = safeguard_info(crits, cfg_adapt)
  kept = variables if chosen == 0 else variables_of(candidates[chosen - 1])
  return kept, last, info


def stack(trees: list) -> Any:
  """Pytrees of one structure -> one pytree with a leading class axis."""
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def unstack(tree, n: int) -> list:
  """The inverse of `stack`: `n` pytrees."""
  return [jax.tree.map(lambda a: a[i], tree) for i in range(n)]


def run_classes(method: str, fns: Functions, cfg_adapt, variables: list[dict],
                sources: list[adapt.Source], images: list[np.ndarray], keys: list[jax.Array],
                progress: Callable | None = None) -> tuple[list, list, list]:
  """`run` for C classes at once: every step, criterion and moment is one vmapped call.

  `fns` comes from `build(..., classes=True)`. Class c gets exactly what
  `run(method, ..., variables[c], sources[c], images[c], keys[c])` computes
  (its split, minibatch order and step keys are drawn from its own key; its
  bank is padded to the largest with `scoring.pad_banks` and masked), to
  float rounding (tests/test_multiclass.py). Every class needs the same number
  of adaptation images (the classes share the step count).

  Returns per-class lists `(kept, last, info)` as `run`.
  """
  adapt.check_method(method)
  c = len(variables)
  if not (c == len(sources) == len(images) == len(keys)) or c == 0:
    raise ValueError(f"run_classes needs one variables/source/images/key per class, got "
                     f"{len(variables)}/{len(sources)}/{len(images)}/{len(keys)}")
  if method == "none":
    return list(variables), list(variables), [{"bn_mode": cfg_adapt.bn_mode} for _ in range(c)]
  n = {len(x) for x in images}
  if len(n) != 1:
    raise cli.UserError(f"classes adapted together need as many adaptation images each, got "
                        f"{sorted(n)}; adapt them one by one (tta.run) or take the same number")
  n = n.pop()
  if n < 1:
    raise cli.UserError("no adaptation images; give target images (config.shift.adapt_fraction "
                        "in experiments)")
  sizes = [len(s.bank) for s in sources]
  adapt.check_class_banks(fns.settings, sizes)
  if len(set(sizes)) > 1:
    banks, valid = scoring.pad_banks([s.bank for s in sources])
    source = adapt.Source(jnp.asarray(banks), stack([s.mean for s in sources]),
                          stack([s.cov for s in sources]), jnp.asarray(valid))
  else:
    source = stack([adapt.Source(s.bank, s.mean, s.cov) for s in sources])
  split = [jax.random.split(k, 3) for k in keys]
  k_split, k_loop, k_crit = ([s[i] for s in split] for i in range(3))
  guard = bool(cfg_adapt.safeguard)
  if guard:
    parts = [split_holdout(n, cfg_adapt.holdout_fraction, k) for k in k_split]
  else:
    parts = [(np.arange(n), np.zeros(0, np.int64))] * c
  train = np.stack([x[p[0]] for x, p in zip(images, parts)])
  infos = [{"bn_mode": cfg_adapt.bn_mode, "n_adapt_train": len(p[0]), "n_holdout": len(p[1])}
           for p in parts]
  v0 = adapt.stack_classes(variables)
  source_stats = v0["batch_stats"]
  stats, mode = source_stats, cfg_adapt.bn_mode
  if method == "bn_stats" or mode != "source":
    t_stats = target_statistics(fns.moments, v0, train, cfg_adapt.stats_batch, axis=1)
    mode = "target_stats" if method == "bn_stats" else mode
    stats = (t_stats if mode == "target_stats" else
             adapt.mix_batch_stats(source_stats, t_stats, train.shape[1], cfg_adapt.bn_prior))
  for info in infos:
    info["bn_stats_used"] = mode
  candidates = [adapt.split_bn(v0["params"])[0]]
  if fns.step is not None:
    axes = adapt.class_axes(variables[0]["params"])
    state = adapt.AdaptState(v0["params"], stats,
                             jax.vmap(fns.optimizer.init, in_axes=(axes,))(v0["params"]))
    batch = min(cfg_adapt.batch_images, train.shape[1])
    orders = [minibatches(train.shape[1], batch, cfg_adapt.epochs, k) for k in k_loop]
    step_metrics = []
    steps = range(len(orders[0]))
    for s in (progress(steps, desc=f"adapt {method} x {c} classes") if progress else steps):
      x = np.stack([train[i][orders[i][s]] for i in range(c)])
      ks = jnp.stack([jax.random.fold_in(k, s) for k in k_loop])
      state, m = fns.step(state, source, jnp.asarray(x), ks)
      step_metrics.append(m)
      candidates.append(adapt.split_bn(state.params)[0])
    step_metrics = jax.device_get(step_metrics)   # one transfer for the whole pass
    for i, info in enumerate(infos):
      info.update(steps_info([{k: v[i] for k, v in m.items()} for m in step_metrics], cfg_adapt))
  else:
    for info in infos:
      info["steps"] = 0

  def variables_of(bn_flat):
    return {"params": adapt.with_bn(v0["params"], bn_flat), "batch_stats": stats}
  last = [adapt.unstack_class(variables_of(candidates[-1]), i) for i in range(c)]
  if not guard:
    return last, last, infos
  hold = jnp.asarray(np.stack([x[p[1]] for x, p in zip(images, parts)]))
  kc = jnp.stack(k_crit)
  base = fns.criterion(v0, source, hold, kc)
  crits = jax.device_get([base] + [base if i == 0 and stats is source_stats
                                   else fns.criterion(variables_of(v), source, hold, kc)
                                   for i, v in enumerate(candidates)])
  kept = []
  for i, info in enumerate(infos):
    chosen, info["safeguard"] = safeguard_info([{k: v[i] for k, v in cr.items()} for cr in crits],
                                               cfg_adapt)
    kept.append(variables[i] if chosen == 0 else
                adapt.unstack_class(variables_of(candidates[chosen - 1]), i))
  return kept, last, infos
