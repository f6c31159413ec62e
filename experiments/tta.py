"""The adaptation loop around `rodajax.adapt`'s pure step: a shift gate, Algorithm 1, a safeguard.

Shared by `experiments.train` (tables) and the `fit -> adapt -> predict` tool.

Per call of `run` (one method, one target domain):
0. Shift gate (label-free, beyond the paper; `adapt.gate`, default on): the
   source model's `adapt.gate_statistic` on all adaptation images against the
   same statistic of held-out training normals (`gate_info`); below
   `adapt.gate` x that reference the target counts as unshifted and the source
   model is returned unchanged. The decision is in `info["gate"]`.
0b. Selection (label-free, beyond the paper; `adapt.select`, default lowest): with
   `lowest`, only the `adapt.select_share` of the adaptation images that score
   lowest under the model the steps start from (the statistics of step 2 taken
   from all of them) are adapted on (`select_images`); the rest are taken as
   the line's defective images. The choice is in `info["select"]`.
1. The adaptation images are split (seeded) into a training part and, with the
   safeguard on, a held-out part (`adapt.holdout_fraction`).
2. BatchNorm statistics (`adapt.bn_mode`, `adapt.bn_statistics`): kept
   (source), replaced by those of the training part (target_stats), its means
   with the source variances (target_mean) or with the geometric mean of the two
   variances (geometric), mixed with an N-sample source prior (prior, N =
   `adapt.bn_prior`).
3. Algorithm 1: `adapt.epochs` passes over the training part in minibatches of
   `adapt.batch_images` (a shuffled order per pass; the last, short minibatch
   is filled with images from the start of the order so one compilation serves
   all), one jitted step each: ceil(n_train / batch) x epochs steps.
   Metrics stay on the device and are fetched once, after the loop.
4. Safeguard (label-free, beyond the paper; `adapt.safeguard`, default off): a criterion
   (`rodajax.adapt.holdout_criterion`, `adapt.safeguard_criterion`) on the
   held-out images for the source model and for the end of the pass
   (`adapt.safeguard_candidates = last`; `steps`: after every step, the lowest
   kept); the adapted model is kept if it beats the source model by the
   relative `adapt.safeguard_margin`, else the source model is kept. The
   decision is returned in `info["safeguard"]`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli, loops
from flax import traverse_util

from rodajax import adapt, augment, backbones, features, scoring

SAFEGUARD_CANDIDATES = ("last", "steps")   # adapt.safeguard_candidates, see `guarded`
SETTING_KEYS = ("views", "target_patches", "bank_patches", "epsilon", "sinkhorn_threshold",
                "sinkhorn_max_iterations", "online_above", "chunk", "kl_reg",
                "hungarian_patches", "trim")


def settings(cfg_adapt, method: str) -> adapt.Settings:
  """`adapt.Settings` of `method` from the `config.adapt` block.

  A key the block lacks (a model fitted before the setting existed, e.g. `trim`)
  takes `adapt.Settings`' default.
  """
  defaults = {f.name: f.default for f in dataclasses.fields(adapt.Settings)}
  return adapt.Settings(method=method, **{k: cfg_adapt.get(k, defaults[k]) for k in SETTING_KEYS})


@dataclasses.dataclass
class Functions:
  """The jitted functions of one method, built once per experiment and reused."""
  settings: adapt.Settings
  optimizer: Any
  step: Callable | None         # (state, source, images, key) -> (state, metrics)
  criterion: Callable           # (variables, source, images, key) -> {"transport", "nn"}
  moments: Callable             # (variables, images) -> per-layer {"mean", "var"}
  features: Callable = None     # (variables, images) -> patch features, not class-mapped
  gate_statistic: Callable = None  # (z [B, P, D], source, key) -> the shift gate's statistic
  stack: Callable = adapt.stack_classes        # classes=True: jitted (one dispatch, not
  unstack: Callable = adapt.unstack_class      # one per leaf)


def class_batch(cfg_adapt) -> int:
  """Classes per vmapped group (`adapt.class_batch`, `uda.class_batch`; "auto": 1 on CPU, 0 = all
  elsewhere).

  On a CPU a batch of classes is no faster than one after the other (the cores
  are busy either way) and batched kernels cost more; accelerators want the
  whole batch at once. benchmarks/multiclass.py measures both on this machine.
  """
  v = cfg_adapt.get("class_batch", "auto")
  if v == "auto":
    return 1 if jax.default_backend() == "cpu" else 0
  try:
    return int(v)
  except ValueError:
    raise cli.UserError(f"config class_batch={v!r}: expects auto, 0 (every class in one "
                        "vmap) or the number of classes per vmapped group") from None


def build(method: str, cfg_adapt, module, extract: Callable, params, crop: int,
          prepare: Callable | None = None, views: Callable = augment.views,
          classes: bool = False, pseudo: Callable = augment.pseudo_anomalies) -> Functions:
  """Jits the step, the held-out criterion and the BN moments of `method`.

  `prepare(images) -> module input` (default: centre crop + ImageNet
  normalisation); point clouds pass `points.encoder_input` and
  `augment.point_views` (and `pseudo=augment.point_pseudo_anomalies`, the
  synthetic defects of the safeguard's `synthetic` criteria, computed when
  `adapt.synthetic_copies > 0`). `classes=True` maps each function over a leading
  class axis (`adapt.class_map`: a vmap, or groups of `adapt.class_batch`
  classes) with the frozen weights shared, before jitting: the functions of
  `run_classes`. The class step takes and returns an `AdaptState` whose
  BatchNorm leaves, statistics and optimiser state carry the class axis.
  """
  s = settings(cfg_adapt, method)
  optimizer = adapt.make_optimizer(params, cfg_adapt.lr, cfg_adapt.optimizer)
  jit, step = (lambda f, n_args: jax.jit(f)), None   # n_args: for the class map's in_axes
  if classes:   # variables as adapt.stack_classes: BN leaves per class, frozen weights shared
    cb = class_batch(cfg_adapt)
    v_axes = {"params": adapt.class_axes(params), "batch_stats": 0}
    jit = lambda f, n_args: jax.jit(adapt.class_map(f, (v_axes,) + (0,) * (n_args - 1), cb))
    if adapt.is_gradient_method(method):
      one = adapt.make_step(s, extract, optimizer, views)

      def one_class(bn, stats, opt_state, frozen, source, images, key):
        params = adapt.with_bn(traverse_util.unflatten_dict(frozen), bn)
        new, m = one(adapt.AdaptState(params, stats, opt_state), source, images, key)
        return (adapt.split_bn(new.params)[0], new.batch_stats, new.opt_state), m
      mapped = adapt.class_map(one_class, (0, 0, 0, None, 0, 0, 0), cb)

      def class_step(state, source, images, keys):
        bn, frozen = adapt.split_bn(state.params)
        (bn, stats, opt_state), m = mapped(bn, state.batch_stats, state.opt_state, frozen, source,
                                           images, keys)
        return adapt.AdaptState(adapt.with_bn(state.params, bn), stats, opt_state), m
      step = jax.jit(class_step)
  elif adapt.is_gradient_method(method):
    step = jax.jit(adapt.make_step(s, extract, optimizer, views))
  prepare = prepare or (lambda images: features.crop_and_normalise(images, crop))

  copies = int(cfg_adapt.get("synthetic_copies", 0))

  def criterion(variables, source, images, key):
    z = extract(variables, images)
    z_pseudo = None
    if copies > 0:   # the same key for every candidate: the same synthetic defects
      z_pseudo = extract(variables, pseudo(images, jax.random.fold_in(key, 1), copies))
      z_pseudo = z_pseudo.reshape(z_pseudo.shape[0], -1, z.shape[-1])
    return adapt.holdout_criterion(z.reshape(z.shape[0], -1, z.shape[-1]), source, key, s,
                                   z_pseudo)

  def moments(variables, images):
    return adapt.batch_moments(module, variables, prepare(images))
  gate = (jax.jit(extract), gate_statistic_fn(cfg_adapt))   # per class, never class-mapped
  if classes:
    return Functions(s, optimizer, step, jit(criterion, 4), jit(moments, 2), *gate,
                     jax.jit(adapt.stack_classes), jax.jit(adapt.unstack_class, static_argnums=1))
  return Functions(s, optimizer, step, jit(criterion, 4), jit(moments, 2), *gate)


def gate_statistic_fn(cfg_adapt) -> Callable:
  """Jitted `(z [B, P, D], source, key) -> scalar`: `adapt.gate_statistic` named by
  `adapt.gate_statistic` with the settings of `config.adapt` (for targets and the reference)."""
  s = settings(cfg_adapt, "roda")
  name = cfg_adapt.get("gate_statistic", "nn_median")
  return jax.jit(lambda z, source, key: adapt.gate_statistic(
      z.reshape(-1, z.shape[-1]), source, key, s, name))


def gate_key(key: jax.Array) -> jax.Array:
  """The key of the gate's transport problem (subsets), derived from a run's or a fit's key."""
  return jax.random.fold_in(key, 0x9a7e)


def gate_info(fns: Functions, cfg_adapt, variables: dict, source: adapt.Source,
              images: np.ndarray, key: jax.Array, reference: float | None) -> dict | None:
  """The shift gate's decision on uint8 images `[n, R, R, 3]` (None: `adapt.gate` is 0).

  Label-free, beyond the paper: the source model's statistic
  (`adapt.gate_statistic`) on all the adaptation images against `reference`,
  the same statistic of training normals held out of a bank fitted without
  them (`experiments.train.gate_reference`);
  `adapt.shift_gate` says "shifted" at `adapt.gate` x the reference. Only a
  shifted target is adapted. Images go through the extractor in batches of
  `adapt.stats_batch` (`loops.batched`).
  """
  threshold = float(cfg_adapt.get("gate", 0.0))
  if threshold <= 0.0:
    return None
  if reference is None or not np.isfinite(reference) or reference <= 0:
    raise cli.UserError(
        f"config.adapt.gate={threshold} needs the clean reference statistic of held-out training "
        f"normals (got {reference}); it is computed when the model is fitted with "
        "config.fit.calibration_fraction > 0: refit the model, or set config.adapt.gate=0 to "
        "adapt without the gate")
  z = loops.batched(fns.features, variables, images, min(cfg_adapt.stats_batch, len(images)))
  value = fns.gate_statistic(jnp.asarray(z.reshape(len(z), -1, z.shape[-1])), source,
                             gate_key(key))
  g = jax.device_get(adapt.shift_gate(value, jnp.float32(reference), threshold))
  return {"statistic": cfg_adapt.get("gate_statistic", "nn_median"), "threshold": threshold,
          "reference": float(reference), "value": float(value),
          "ratio": float(g["ratio"]), "shifted": bool(g["shifted"]), "n_images": len(images)}


def chosen_statistics(mode: str, source_stats, t_stats, n_target, cfg_adapt):
  """`(batch_stats, record)`: `adapt.bn_statistics` for `mode`, and what it chose.

  The record holds `bn_stats_used` (the mode; for "routed", "geometric" or
  "target_stats" per split, a list per class with a class axis) and, for
  "routed", the stem's log variance ratio it decided on (`stem_log_var_ratio`)
  and the threshold it compared it with (`noise_ratio`).
  """
  if mode != "routed":
    return adapt.bn_statistics(mode, source_stats, t_stats, n_target, cfg_adapt.bn_prior), {
        "bn_stats_used": mode}
  stem = backbones.stem_batchnorm(source_stats)
  # models fitted before the setting existed have no noise_ratio
  threshold = float(cfg_adapt.get("noise_ratio", adapt.NOISE_RATIO))
  stats = adapt.bn_statistics(mode, source_stats, t_stats, n_target, cfg_adapt.bn_prior,
                              stem=stem, noise_ratio=threshold)
  ratio = np.asarray(adapt.stem_log_var_ratio(source_stats, t_stats, stem))
  used = np.where(ratio > threshold, "geometric", "target_stats")
  if ratio.ndim == 0:
    return stats, {"bn_stats_used": str(used), "stem_log_var_ratio": float(ratio),
                   "noise_ratio": threshold}
  return stats, {"bn_stats_used": [str(u) for u in used],
                 "stem_log_var_ratio": [float(r) for r in ratio], "noise_ratio": threshold}


def start_statistics(method: str, cfg_adapt, source_stats, target: Callable[[], Any],
                     n_target) -> tuple[Any, dict]:
  """`(batch_stats, record)` an adaptation starts from, and the record `chosen_statistics` gives.

  bn_stats always takes target statistics; other methods take `adapt.bn_mode`'s
  (`source`: `source_stats` itself, record `{"bn_stats_used": "source"}`).
  `target()` computes the target statistics (`target_statistics`); it is called
  only when the mode needs them. `n_target`: images behind them (per class: an
  array). The one place this choice is made: `select_images` (on all adaptation
  images), `run` and `run_classes` (on the training part) call it.
  """
  if method != "bn_stats" and cfg_adapt.bn_mode == "source":
    return source_stats, {"bn_stats_used": "source"}
  mode = "target_stats" if method == "bn_stats" else cfg_adapt.bn_mode
  return chosen_statistics(mode, source_stats, target(), n_target, cfg_adapt)


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


def select_images(fns: Functions, cfg_adapt, method: str, variables: dict,
                  source: adapt.Source, images: np.ndarray,
                  moments: Callable | None = None) -> tuple[np.ndarray, dict | None]:
  """`(indices, record)`: which adaptation images (`[n, R, R, 3]` uint8, or point clouds
  `[n, P, 3]`) to adapt on.

  `adapt.select = all`: every image, record None. `lowest`: the images are
  scored (PatchCore's image score against `source.bank`) under the source
  weights with the BatchNorm statistics `method` would take from all of them
  (`start_statistics`), and `rodajax.adapt.select_lowest` keeps the
  `adapt.select_share` lowest. The statistics are then re-estimated on the kept
  images by the caller. `moments`: `fns.moments` for one class (the default) or
  a per-class wrapper (`run_classes`).
  """
  how = cfg_adapt.get("select", "all")
  if how == "all":
    return np.arange(len(images)), None
  if how not in adapt.SELECTIONS:
    raise cli.UserError(f"config.adapt.select={how!r}; use one of {', '.join(adapt.SELECTIONS)}")
  share = float(cfg_adapt.get("select_share", 0.5))
  stats, _ = start_statistics(
      method, cfg_adapt, variables["batch_stats"],
      lambda: target_statistics(moments or fns.moments, variables, images, cfg_adapt.stats_batch),
      len(images))
  scorer = {"params": variables["params"], "batch_stats": stats}
  z = loops.batched(fns.features, scorer, images, min(cfg_adapt.stats_batch, len(images)))
  # patches [n, h, w, D] (images) or [n, groups, D] (point clouds): the largest patch distance
  d = scoring.nearest_distances(jnp.asarray(z.reshape(-1, z.shape[-1])), source.bank,
                                cfg_adapt.chunk, source.valid)
  scores = scoring.image_scores(d.reshape(len(z), -1))
  keep = np.asarray(adapt.select_lowest(scores, share))
  return keep, {"rule": how, "share": share, "kept": len(keep), "of": len(images),
                "indices": [int(i) for i in keep],
                "score_kept_max": float(np.asarray(scores)[keep].max()),
                "score_median": float(np.median(np.asarray(scores)))}


def holdout_size(n: int, fraction: float) -> int:
  """Held-out images of `n` (at least one held out and one left to train on)."""
  return int(np.clip(round(fraction * n), 1, n - 1))


def stack_problem(settings: adapt.Settings, cfg_adapt, bank_sizes, n_images) -> str | None:
  """Why these classes cannot adapt together in `run_classes`, or None if they can."""
  try:
    adapt.check_class_banks(settings, bank_sizes)
  except ValueError as e:
    return str(e)
  n_train = [n - holdout_size(n, cfg_adapt.holdout_fraction) if cfg_adapt.safeguard and n >= 2
             else n for n in n_images]
  if len(set(n_train)) > 1 and min(n_train) < cfg_adapt.batch_images:
    return (f"classes adapted together have {min(n_train)}..{max(n_train)} training images after "
            f"the hold-out; each needs at least adapt.batch_images={cfg_adapt.batch_images} (or "
            "all the same number): lower adapt.batch_images or adapt them one by one")
  return None


def split_holdout(n: int, fraction: float, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """Seeded `(train_idx, holdout_idx)` of n adaptation images; at least one of each."""
  if n < 2:
    raise cli.UserError(f"the safeguard needs at least 2 adaptation images (1 held out), got {n}; "
                        "give more target images (config.shift.adapt_fraction in experiments) "
                        "or set config.adapt.safeguard=False")
  k = holdout_size(n, fraction)
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


def decide(criteria: list[float], margin: float, veto: list[float] | None = None) -> int:
  """Safeguard rule: index of the kept candidate (0 = source parameters).

  criteria[0] is the source model's held-out criterion, criteria[1] the one
  with the adapted statistics before any step, criteria[1 + s] the one after
  step s. The best candidate is kept only if it is below the source's by
  margin x |source's| (criteria may be negative: `synthetic_gain`) and, with
  `veto` (a second criterion, same indexing), that candidate's veto value is
  not above the source's; otherwise 0.
  """
  if len(criteria) < 2 or not np.isfinite(criteria[0]):
    return 0
  adapted = np.asarray(criteria[1:], np.float64)
  adapted = np.where(np.isfinite(adapted), adapted, np.inf)
  best = int(np.argmin(adapted)) + 1
  if not criteria[best] < criteria[0] - margin * abs(criteria[0]):
    return 0
  if veto is not None and not (np.isfinite(veto[best]) and veto[best] <= veto[0]):
    return 0
  return best


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


def guarded(cfg_adapt, n_candidates: int) -> list[int]:
  """Indices of the candidates the safeguard compares with the source model.

  Candidate 0 holds the adapted statistics before any step, candidate s the
  parameters after step s. `adapt.safeguard_candidates`: "last" (default)
  compares only the end of the pass, the model Algorithm 1 returns: one
  comparison, so a noisy criterion is not given several chances to beat the
  source by luck (the minimum of k noisy values is biased low); "steps"
  compares every candidate and keeps the lowest.
  """
  how = cfg_adapt.get("safeguard_candidates", "last")
  if how not in SAFEGUARD_CANDIDATES:
    raise cli.UserError(f"config.adapt.safeguard_candidates={how!r}; use "
                        f"{' or '.join(SAFEGUARD_CANDIDATES)}")
  return [n_candidates - 1] if how == "last" else list(range(n_candidates))


def candidate_label(index: int) -> str:
  return "statistics" if index == 0 else f"step {index}"


def safeguard_info(crits: list[dict], cfg_adapt,
                   labels: list[str] | None = None) -> tuple[int, dict]:
  """`(chosen, record)` from the held-out criteria of the source model and the candidates.

  crits[0]: the source model; crits[1 + j]: candidate j, named labels[j]
  (default: statistics only, then step 1, 2, ...). `chosen` indexes crits
  (0 = keep the source).
  """
  name = cfg_adapt.safeguard_criterion
  values = [float(c[name]) for c in crits]
  labels = labels or [candidate_label(j) for j in range(len(crits) - 1)]
  veto_name = cfg_adapt.get("safeguard_veto", "") or None
  for what, k in (("criterion", name), ("veto", veto_name)):
    if k is not None and k not in crits[0]:
      raise cli.UserError(f"config.adapt.safeguard_{what}={k!r} is not among the computed "
                          f"criteria {sorted(crits[0])}; the synthetic ones need "
                          "config.adapt.synthetic_copies >= 1")
  veto = None if veto_name is None else [float(c[veto_name]) for c in crits]
  chosen = decide(values, cfg_adapt.safeguard_margin, veto)
  return chosen, {
      "criterion": name, "margin": cfg_adapt.safeguard_margin, "veto": veto_name,
      "vetoed": veto is not None and chosen == 0 and decide(values, cfg_adapt.safeguard_margin) != 0,
      "source": values[0], "candidates": values[1:], "candidate_labels": labels,
      "other_criterion": {k: [float(c[k]) for c in crits] for k in crits[0] if k != name},
      "kept": "source" if chosen == 0 else labels[chosen - 1],
      "adapted": chosen != 0}


def run(method: str, fns: Functions, cfg_adapt, variables: dict, source: adapt.Source,
        images: np.ndarray, key: jax.Array, progress: Callable | None = None,
        cache: dict | None = None, reference: float | None = None) -> tuple[dict, dict, dict]:
  """Adapts `variables` with `method` on uint8 target images `[n, R, R, 3]`.

  With `adapt.gate > 0`, first the shift gate (`gate_info`, `reference` from
  `experiments.train.gate_reference`): an unshifted target keeps the source
  model, nothing is adapted; the decision is in `info["gate"]`.

  `cache`: a dict the caller keeps for one target split (same `images`, `key`,
  `variables` and `source`) and passes to every method's run: the source
  model's held-out criterion, the same for every method, is computed once.
  Entries are keyed by the held-out indices and the criterion's settings, so a
  cache shared by mistake misses instead of answering wrongly.

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
  gate = gate_info(fns, cfg_adapt, variables, source, images, key, reference)
  if gate is not None:
    info["gate"] = gate
    if not gate["shifted"]:
      info["steps"] = 0
      return variables, variables, info
  keep, chosen = select_images(fns, cfg_adapt, method, variables, source, images)
  if chosen is not None:
    images, info["select"] = images[keep], chosen
  k_split, k_loop, k_crit = jax.random.split(key, 3)
  guard = bool(cfg_adapt.safeguard)
  if guard:
    train_idx, hold_idx = split_holdout(len(images), cfg_adapt.holdout_fraction, k_split)
  else:
    train_idx, hold_idx = np.arange(len(images)), np.zeros(0, np.int64)
  train = images[train_idx]
  info.update({"n_adapt_train": len(train_idx), "n_holdout": len(hold_idx)})

  source_stats = variables["batch_stats"]
  stats, used = start_statistics(
      method, cfg_adapt, source_stats,
      lambda: target_statistics(fns.moments, variables, train, cfg_adapt.stats_batch), len(train))
  info.update(used)
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
  entry = (hold_idx.tobytes(), len(images),
           dataclasses.replace(fns.settings, method="", views=0),
           int(cfg_adapt.get("synthetic_copies", 0)))
  if cache is not None and cache.get("entry") == entry:
    base = cache["source_criterion"]
  else:
    base = fns.criterion(variables, source, hold, k_crit)
    if cache is not None:
      cache.update(entry=entry, source_criterion=base)
  idx = guarded(cfg_adapt, len(candidates))
  # With the source statistics the first candidate is the source model: no second evaluation.
  crits = jax.device_get([base] + [base if i == 0 and stats is source_stats
                                   else fns.criterion(variables_of(candidates[i]), source, hold,
                                                      k_crit)
                                   for i in idx])
  chosen, info["safeguard"] = safeguard_info(crits, cfg_adapt, [candidate_label(i) for i in idx])
  kept = variables if chosen == 0 else variables_of(candidates[idx[chosen - 1]])
  return kept, last, info


def _without_gate(cfg_adapt):
  c = cfg_adapt.copy_and_resolve_references()
  c.gate = 0.0
  return c


def stack(trees: list) -> Any:
  """Pytrees of one structure -> one pytree with a leading class axis."""
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def unstack(tree, n: int) -> list:
  """The inverse of `stack`: `n` pytrees."""
  return [jax.tree.map(lambda a: a[i], tree) for i in range(n)]


def _select(active: jax.Array, new, old):
  """Per class (leading axis of every leaf): `new` where `active`, else `old`."""
  return jax.tree.map(lambda a, b: jnp.where(active.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
                      new, old)


def _per_class(fns: Functions, fn: Callable, v_stacked: dict, i: int, *args):
  """`fn` (a class-vmapped function of `fns`) on class `i` alone: a batch of one class."""
  one = fns.stack([fns.unstack(v_stacked, i)])
  return jax.tree.map(lambda a: a[0], fn(one, *[jax.tree.map(lambda x: x[None], a) for a in args]))


def run_classes(method: str, fns: Functions, cfg_adapt, variables: list[dict],
                sources: list[adapt.Source], images: list[np.ndarray], keys: list[jax.Array],
                progress: Callable | None = None,
                references: list[float | None] | None = None) -> tuple[list, list, list]:
  """`run` for C classes at once: every step, criterion and moment is one vmapped call.

  The shift gate (`references`, one per class) is decided class by class
  first; the classes it finds unshifted keep their source model (the vmapped
  pass still runs for them when another class is shifted, and is discarded).

  `fns` comes from `build(..., classes=True)`. Class c gets what
  `run(method, ..., variables[c], sources[c], images[c], keys[c])` computes
  (its split, minibatch order and step keys are drawn from its own key; its
  bank is padded to the largest with `scoring.pad_banks` and masked), to
  float rounding (tests/test_multiclass.py).

  Classes with fewer adaptation images take fewer steps: the pass runs the
  largest class's step count and a class past its own last step is frozen
  (its step is computed and discarded). With different image counts, the
  target statistics and the held-out criterion (whose inputs then differ in
  shape) are computed class by class through the same vmapped functions.
  Every class needs at least `adapt.batch_images` training images, or all the
  same number.

  Returns per-class lists `(kept, last, info)` as `run`.
  """
  adapt.check_method(method)
  c = len(variables)
  if not (c == len(sources) == len(images) == len(keys)) or c == 0:
    raise ValueError(f"run_classes needs one variables/source/images/key per class, got "
                     f"{len(variables)}/{len(sources)}/{len(images)}/{len(keys)}")
  if method == "none":
    return list(variables), list(variables), [{"bn_mode": cfg_adapt.bn_mode} for _ in range(c)]
  if min(len(x) for x in images) < 1:
    raise cli.UserError("no adaptation images; give target images (config.shift.adapt_fraction "
                        "in experiments)")
  references = references or [None] * c
  gates = [gate_info(fns, cfg_adapt, v, s, x, k, r)
           for v, s, x, k, r in zip(variables, sources, images, keys, references)]
  if gates[0] is not None:
    if not any(g["shifted"] for g in gates):
      return list(variables), list(variables), [
          {"bn_mode": cfg_adapt.bn_mode, "gate": g, "steps": 0} for g in gates]
    kept, last, infos = run_classes(method, fns, _without_gate(cfg_adapt), variables, sources,
                                    images, keys, progress)
    for i, g in enumerate(gates):
      if not g["shifted"]:
        kept[i] = last[i] = variables[i]
        infos[i] = {"bn_mode": cfg_adapt.bn_mode, "steps": 0}
      infos[i]["gate"] = g
    return kept, last, infos
  # Selection class by class (the counts then differ only where the image counts do).
  chosen = [select_images(fns, cfg_adapt, method, v, s, x,
                         lambda v_, x_: _per_class(fns, fns.moments, fns.stack([v_]), 0, x_))
            for v, s, x in zip(variables, sources, images)]
  images = [x[k] for x, (k, _) in zip(images, chosen)]
  sizes = [len(s.bank) for s in sources]
  problem = stack_problem(fns.settings, cfg_adapt, sizes, [len(x) for x in images])
  if problem:
    raise cli.UserError(problem)
  if len(set(sizes)) > 1:
    banks, valid = scoring.pad_banks([s.bank for s in sources])
    source = adapt.Source(jnp.asarray(banks), stack([s.mean for s in sources]),
                          stack([s.cov for s in sources]), jnp.asarray(valid))
  else:
    source = stack([adapt.Source(s.bank, s.mean, s.cov) for s in sources])
  split = [jax.random.split(k, 3) for k in keys]
  k_split, k_loop, k_crit = ([s[i] for s in split] for i in range(3))
  guard = bool(cfg_adapt.safeguard)
  parts = [split_holdout(len(x), cfg_adapt.holdout_fraction, k) if guard
           else (np.arange(len(x)), np.zeros(0, np.int64)) for x, k in zip(images, k_split)]
  train = [x[p[0]] for x, p in zip(images, parts)]
  n_train = [len(t) for t in train]
  equal = len(set(n_train)) == 1
  batch = min(cfg_adapt.batch_images, min(n_train))
  infos = [{"bn_mode": cfg_adapt.bn_mode, "n_adapt_train": len(p[0]), "n_holdout": len(p[1])}
           for p in parts]
  for info, (_, record) in zip(infos, chosen):
    if record is not None:
      info["select"] = record
  v0 = fns.stack(variables)
  source_stats = v0["batch_stats"]

  def class_stats():
    if equal:
      return target_statistics(fns.moments, v0, np.stack(train), cfg_adapt.stats_batch, axis=1)
    return stack([target_statistics(lambda v, x, i=i: _per_class(fns, fns.moments, v, i, x),
                                    v0, t, cfg_adapt.stats_batch) for i, t in enumerate(train)])
  # prior: Eq. 3's weight per class; routed: a choice per class
  stats, used = start_statistics(method, cfg_adapt, source_stats, class_stats, np.asarray(n_train))
  for i, info in enumerate(infos):
    info.update({k: v[i] if isinstance(v, list) else v for k, v in used.items()})
  candidates = [adapt.split_bn(v0["params"])[0]]
  orders = [[]] * c
  if fns.step is not None:
    axes = adapt.class_axes(variables[0]["params"])
    state = adapt.AdaptState(v0["params"], stats,
                             jax.vmap(fns.optimizer.init, in_axes=(axes,))(v0["params"]))
    orders = [minibatches(n, batch, cfg_adapt.epochs, k) for n, k in zip(n_train, k_loop)]
    step_metrics = []
    steps = range(max(len(o) for o in orders))
    # Step s of class i uses fold_in(k_loop[i], s), as `run`; all keys in one call.
    step_keys = jax.vmap(lambda k: jax.vmap(lambda t: jax.random.fold_in(k, t))(
        jnp.arange(len(steps))))(jnp.stack(k_loop))
    for s in (progress(steps, desc=f"adapt {method} x {c} classes") if progress else steps):
      active = np.asarray([s < len(o) for o in orders])
      x = np.stack([train[i][orders[i][min(s, len(orders[i]) - 1)]] for i in range(c)])
      ks = step_keys[:, s]
      new, m = fns.step(state, source, jnp.asarray(x), ks)
      if active.all():
        state = new
      else:    # classes past their last step keep their state
        act = jnp.asarray(active)
        bn = _select(act, adapt.split_bn(new.params)[0], adapt.split_bn(state.params)[0])
        state = adapt.AdaptState(adapt.with_bn(state.params, bn), state.batch_stats,
                                 _select(act, new.opt_state, state.opt_state))
      step_metrics.append(m)
      candidates.append(adapt.split_bn(state.params)[0])
    step_metrics = jax.device_get(step_metrics)   # one transfer for the whole pass
    for i, info in enumerate(infos):
      info.update(steps_info([{k: v[i] for k, v in m.items()}
                              for m in step_metrics[:len(orders[i])]], cfg_adapt))
  else:
    for info in infos:
      info["steps"] = 0

  def variables_of(bn_flat):
    return {"params": adapt.with_bn(v0["params"], bn_flat), "batch_stats": stats}
  last = [fns.unstack(variables_of(candidates[len(orders[i])]), i) for i in range(c)]
  if not guard:
    return last, last, infos
  holds = [x[p[1]] for x, p in zip(images, parts)]
  kc = jnp.stack(k_crit)
  if len({len(h) for h in holds}) == 1:
    hold = jnp.asarray(np.stack(holds))
    criterion = lambda v: fns.criterion(v, source, hold, kc)
  else:
    sources_i = [jax.tree.map(lambda a, i=i: a[i], source) for i in range(c)]
    criterion = lambda v: stack([_per_class(fns, fns.criterion, v, i, sources_i[i],
                                            jnp.asarray(holds[i]), kc[i]) for i in range(c)])
  base = criterion(v0)
  # A class past its last step is frozen: candidates[-1] is every class's own last.
  idx = guarded(cfg_adapt, len(candidates))
  crits = jax.device_get([base] + [base if i == 0 and stats is source_stats
                                   else criterion(variables_of(candidates[i]))
                                   for i in idx])
  kept = []
  for i, info in enumerate(infos):
    n_own = len(orders[i]) + 1              # statistics only, then its own steps
    own = [j for j, k in enumerate(idx)
           if k < n_own or (k == len(candidates) - 1 and n_own - 1 not in idx)]
    labels = [candidate_label(min(idx[j], n_own - 1)) for j in own]
    chosen, info["safeguard"] = safeguard_info(
        [{k: v[i] for k, v in cr.items()} for cr in [crits[0]] + [crits[1 + j] for j in own]],
        cfg_adapt, labels)
    kept.append(variables[i] if chosen == 0 else
                fns.unstack(variables_of(candidates[idx[own[chosen - 1]]]), i))
  return kept, last, infos
