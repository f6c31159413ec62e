"""`train_and_evaluate(config, workdir)`: fit the memory bank, shift, adapt, evaluate.

Per category: the memory bank (and the backbone variables it was built with)
is fitted once and saved with orbax under `workdir/banks/`; a rerun of the
same config reuses it. Each (shift, severity, method) gives one record in
`workdir/results.json`, written atomically as soon as it exists; a rerun skips
the records already there, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zlib
from typing import Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from experiments import cli, loops, placement, tta
from experiments import workdir as workdir_lib
from rodajax import (adapt, augment, backbones, data, features, metrics, patchcore, points,
                     report)
from rodajax.coreset import coreset_size

log = logging.getLogger("rodajax")


class ConfigError(cli.UserError, ValueError):
  """A config value that cannot work; the message names the key and the fix."""


def parse_list(v) -> list[str]:
  """A comma-separated string (or list/tuple) of config values as a list of strings."""
  return data.parse_categories(v)


def seeds(config) -> list[int]:
  """`config.shift.seeds` (comma-separated) if set, else [config.seed]."""
  many = parse_list(config.shift.get("seeds", ""))
  return [int(s) for s in many] if many else [int(config.seed)]


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks values that would otherwise fail late or silently."""
  if config.coreset.size <= 0 and not 0.0 < config.coreset.ratio <= 1.0:
    raise ConfigError(f"config.coreset.ratio={config.coreset.ratio} must be in (0, 1] "
                      "(or set config.coreset.size > 0)")
  if not data.is_points(config.data) and config.data.crop > config.data.resize:
    raise ConfigError(f"config.data.crop={config.data.crop} exceeds config.data.resize="
                      f"{config.data.resize}")
  try:
    fractions = _fractions(config)
  except ValueError as e:
    raise ConfigError(f"config.shift.adapt_fractions={config.shift.adapt_fractions!r} must be "
                      "comma-separated numbers in [0, 1]") from e
  for f in fractions:
    if not 0.0 <= f <= 1.0:
      raise ConfigError(f"adaptation fraction {f} (config.shift.adapt_fraction(s)) must be in [0, 1]")
  if not 0.0 <= config.adapt.get("trim", 0.0) < 1.0:
    raise ConfigError(f"config.adapt.trim={config.adapt.trim} must be in [0, 1): the share of "
                      "each transport problem's target patches left out of the loss")
  if not data.is_points(config.data) and not data.categories_of(config.data):
    raise ConfigError("config.data.categories is empty; name at least one category")
  if data.is_points(config.data) and config.adapt.get("vmap_classes", False):
    raise ConfigError("config.adapt.vmap_classes is for image datasets; point clouds adapt one "
                      "class at a time (set it to False)")
  if data.is_points(config.data):
    if config.model.backbone != "pointnet":
      raise ConfigError(f"config.model.backbone={config.model.backbone!r}: point clouds "
                        f"({config.data.name}) need a point encoder: pointnet")
    if max(config.data.groups, config.data.group_size) > config.data.points:
      raise ConfigError(f"config.data.groups={config.data.groups} and group_size="
                        f"{config.data.group_size} must not exceed config.data.points="
                        f"{config.data.points}")
  elif config.model.backbone == "pointnet":
    raise ConfigError(f"config.model.backbone=pointnet reads point clouds; config.data.name="
                      f"{config.data.name!r} is an image dataset (use configs/pointcloud.py)")
  try:
    backbones._canonical(config.model.backbone)  # unknown name -> lists the known ones
    shifts = [s for s in parse_list(config.shift.corruptions) if s != "clean"]
    if shifts:
      from rodajax import corruptions, corruptions3d
      if data.is_points(config.data):
        corruptions = corruptions3d
      for s in shifts:
        corruptions.check(s, 1)
      for sev in parse_list(config.shift.severities):
        corruptions.check(shifts[0], int(sev))
    methods = parse_list(config.adapt.methods)
    for m in methods:
      adapt.check_method(m)
  except ValueError as e:   # the library's message names the value and the known ones
    raise ConfigError(f"{e} (config.model.backbone / shift.corruptions / shift.severities / "
                      "adapt.methods)") from None
  if config.model.get("bn_stats", "weights") not in ("weights", "train"):
    raise ConfigError(f"config.model.bn_stats={config.model.bn_stats!r}; use weights (the "
                      "checkpoint's running statistics) or train (re-estimated on the training "
                      "images)")
  if config.adapt.bn_mode not in adapt.BN_MODES:
    raise ConfigError(f"config.adapt.bn_mode={config.adapt.bn_mode!r}; use one of "
                      f"{', '.join(adapt.BN_MODES)}")
  if not np.isfinite(float(config.adapt.get("noise_ratio", adapt.NOISE_RATIO))):
    raise ConfigError(f"config.adapt.noise_ratio={config.adapt.noise_ratio} must be a finite "
                      "number (the stem log variance ratio above which bn_mode=routed takes "
                      "geometric statistics, e.g. 1.2)")
  if config.adapt.get("gate_statistic", "nn_median") not in adapt.GATE_STATISTICS:
    raise ConfigError(f"config.adapt.gate_statistic={config.adapt.gate_statistic!r}; use "
                      f"{' or '.join(adapt.GATE_STATISTICS)}")
  if float(config.adapt.get("gate", 0.0)) < 0.0:
    raise ConfigError(f"config.adapt.gate={config.adapt.gate} must be >= 0 (0 = no shift gate, "
                      "e.g. 1.25)")
  if config.adapt.get("select", "all") not in adapt.SELECTIONS:
    raise ConfigError(f"config.adapt.select={config.adapt.select!r}; use "
                      f"{' or '.join(adapt.SELECTIONS)}")
  if not 0.0 < float(config.adapt.get("select_share", 0.5)) <= 1.0:
    raise ConfigError(f"config.adapt.select_share={config.adapt.select_share} must be in (0, 1] "
                      "(the share of the adaptation images kept by adapt.select=lowest, e.g. 0.5)")
  if config.adapt.epochs < 1:
    raise ConfigError(f"config.adapt.epochs={config.adapt.epochs} must be >= 1")
  if not 0.0 < config.adapt.holdout_fraction < 1.0:
    raise ConfigError(f"config.adapt.holdout_fraction={config.adapt.holdout_fraction} must be "
                      "in (0, 1)")
  crit = config.adapt.safeguard_criterion
  known = ", ".join(adapt.HOLDOUT_CRITERIA)
  if crit not in adapt.HOLDOUT_CRITERIA:
    raise ConfigError(f"config.adapt.safeguard_criterion={crit!r}; use {known}")
  if config.adapt.get("safeguard_candidates", "last") not in tta.SAFEGUARD_CANDIDATES:
    raise ConfigError(f"config.adapt.safeguard_candidates={config.adapt.safeguard_candidates!r}; "
                      f"use {' or '.join(tta.SAFEGUARD_CANDIDATES)}")
  veto = config.adapt.get("safeguard_veto", "")
  if veto and veto not in adapt.HOLDOUT_CRITERIA:
    raise ConfigError(f"config.adapt.safeguard_veto={veto!r}; use {known} or '' (none)")
  for what, name in (("criterion", crit), ("veto", veto)):
    if name.startswith("synthetic") and config.adapt.get("synthetic_copies", 0) < 1:
      raise ConfigError(f"config.adapt.safeguard_{what}={name} needs synthetic defects; set "
                        "config.adapt.synthetic_copies >= 1")
  try:
    seeds(config)
  except ValueError as e:
    raise ConfigError(f"config.shift.seeds={config.shift.seeds!r} must be comma-separated "
                      "integers") from e
  if any(m != "none" for m in methods):
    if min(fractions) <= 0.0:
      raise ConfigError("adaptation methods need target images: set config.shift.adapt_fraction "
                        "> 0 (e.g. 0.2)")


def bank_fingerprint(config, category: str) -> str:
  """What the memory bank of `category` depends on (data, model, coreset, seed), hashed."""
  keys = {"data": {k: config.data[k] for k in ("name", "root", "resize", "crop", "max_train",
                                               "train_fraction", "anomaly_threshold")},
          "model": config.model.to_dict(), "coreset": config.coreset.to_dict(),
          "seed": config.seed, "category": category}
  if config.data.name in ("mvtec", "mvtec3d", "realiad") or data.is_points(config.data):
    keys["data"]["root"] = os.path.abspath(config.data.root)
  if data.is_points(config.data):
    keys["data"].update({k: config.data[k] for k in ("points", "groups", "group_size",
                                                      "group_scale", "plane_distance")})
  return hashlib.sha1(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _taps(config):
  return tuple(parse_list(config.model.taps)) or backbones.DEFAULT_TAPS[
      backbones._canonical(config.model.backbone)]


def train_features(config, ds, variables, extract, timing) -> np.ndarray:
  """Patch features `[N, h, w, D]` of `ds.train` (jitted extractor, fixed batches)."""
  t = time.perf_counter()
  feats = loops.batched(jax.jit(extract), variables, ds.train.images, config.batch_size,
                            progress=tqdm, desc=f"{ds.category}: train features")
  timing["train_features_s"] = time.perf_counter() - t
  timing["features_img_per_s"] = len(ds.train) / timing["train_features_s"]
  if not np.all(np.isfinite(feats)):
    bad = [ds.train.names[i] for i in
           np.flatnonzero(~np.isfinite(feats).all(axis=tuple(range(1, feats.ndim))))]
    raise cli.UserError(f"the backbone gives NaN/inf features on {len(bad)} training images "
                        f"(first: {bad[0]}); check config.model.weights={config.model.weights!r} "
                        "(a damaged or mismatched weight file)")
  return feats


def encoder_input_of(config) -> Callable:
  """Point clouds `[B, N, 3]` -> what the PointNet sees (`points.encoder_input` of `config.data`)."""
  d = config.data
  return lambda x: points.encoder_input(x, d.groups, d.group_size, d.group_scale)


def train_statistics(config, module, variables, images: np.ndarray) -> dict:
  """`variables` with BatchNorm statistics re-estimated on the training images (`model.bn_stats=train`).

  For a backbone whose running statistics describe other inputs than the patches
  the bank holds (the PointNet's are ModelNet40's whole objects): the bank, the
  source model and every adaptation then start from statistics of the normal
  training data. All images in one batch (exact for every layer) up to 64.
  """
  prepare = (encoder_input_of(config) if data.is_points(config.data) else
             lambda x: features.crop_and_normalise(x, config.data.crop))
  moments = jax.jit(lambda v, x: adapt.batch_moments(module, v, prepare(x)))
  stats = tta.target_statistics(moments, variables, images, 64)
  return {**variables, "batch_stats": stats}


def fit_bank(config, feats: np.ndarray, desc: str = "") -> patchcore.MemoryBank:
  """The coreset memory bank of patch features `[N, h, w, D]` or, point clouds, `[N, G, D]`."""
  if feats.ndim == 3:
    feats = feats[:, :, None, :]   # a G x 1 patch grid
  n_patches = feats.shape[0] * feats.shape[1] * feats.shape[2]
  k = coreset_size(n_patches, config.coreset.ratio, config.coreset.size or None)
  with tqdm(total=1, desc=f"{desc}coreset {n_patches} -> {k}") as bar:
    bank = patchcore.fit_memory_bank(feats, jax.random.key(config.seed), config.coreset.ratio,
                                     config.coreset.size or None, config.coreset.proj_dim or None)
    bar.update()
  return bank


def bank_path(config, workdir, ds) -> str:
  folder = config.get("bank_dir", "") or os.path.join(workdir, "banks")
  return os.path.abspath(os.path.join(folder, f"{ds.name}_{ds.category}_"
                                      f"{bank_fingerprint(config, ds.category)}"))


def fit_or_restore(config, workdir, ds, module, variables, extract, timing, feats=None,
                   statistics_done=False):
  """`(bank, source variables)` of `ds.train`: restored from `workdir/banks/...` or fitted and saved.

  `feats`: the training features when the caller has them already (computed with
  `variables`; `statistics_done`: `variables` already hold the `model.bn_stats=train`
  statistics). The source variables are saved with the bank.
  """
  path = bank_path(config, workdir, ds)
  ckpt = ocp.StandardCheckpointer()
  if os.path.isdir(path):
    try:
      tree = ckpt.restore(path)
      bank = patchcore.MemoryBank.from_tree(tree["memory"])
      timing["restored_bank"] = True
      return bank, tree["variables"]
    except Exception as e:  # orbax raises many types for a damaged checkpoint
      aside = report.set_aside(path)
      cli.warn(f"memory bank {path} is damaged ({type(e).__name__}); moved it to {aside} "
               "and fitting it again")
  if config.model.get("bn_stats", "weights") == "train" and not statistics_done:
    variables, feats = train_statistics(config, module, variables, ds.train.images), None
  if feats is None:
    feats = train_features(config, ds, variables, extract, timing)
  t = time.perf_counter()
  bank = fit_bank(config, feats, f"{ds.category}: ")
  timing["coreset_s"] = time.perf_counter() - t
  ckpt.save(path, {"memory": bank.to_tree(), "variables": jax.tree.map(np.asarray, variables)})
  ckpt.wait_until_finished()
  return bank, variables


GATE_SETTING_KEYS = ("gate_statistic", "target_patches", "bank_patches", "epsilon",
                     "sinkhorn_threshold", "sinkhorn_max_iterations", "online_above", "chunk")


def gate_settings(config) -> dict:
  """The `config.adapt` values the shift gate's reference depends on (`GATE_SETTING_KEYS`)."""
  return {k: config.adapt[k] for k in GATE_SETTING_KEYS}


def calibration_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Seeded (kept, held-out) indices of n training images; at least one of each."""
  if n < 2:
    raise cli.UserError(f"only {n} training image: the threshold and the shift gate need at "
                        "least 2 (one held out); add normal images, or set "
                        "config.fit.threshold=f1 and config.adapt.gate=0")
  k = int(np.clip(round(fraction * n), 1, n - 1))
  perm = np.random.default_rng(seed).permutation(n)
  return np.sort(perm[k:]), np.sort(perm[:k])


def calibration_scores(config, feats: np.ndarray, desc: str = ""):
  """`(held, cal_bank, scores)`: the threshold's held-out normals and their image scores.

  `feats`: patch features `[N, h, w, D]` of the training images. The images of
  `calibration_split(N, fit.calibration_fraction, seed)`'s held-out part are
  scored against a bank fitted on the rest (`experiments.fit`'s rule: a held-out
  normal's score is what a new normal image would get).
  """
  keep, held = calibration_split(len(feats), config.fit.calibration_fraction, config.seed)
  cal_bank = fit_bank(config, feats[keep], f"{desc}calibration ")
  c = config
  scorer = jax.jit(patchcore.make_scorer(c.data.crop, c.scoring.sigma, c.scoring.chunk,
                                         c.scoring.reweight))
  scores = loops.batched(lambda _, x: scorer(x, cal_bank.bank)[0], None, feats[held],
                         c.batch_size)
  return held, cal_bank, np.asarray(scores)


def gate_needed(config) -> bool:
  """Whether the runs of `config` use the shift gate (`adapt.gate > 0` and a method adapts)."""
  return (float(config.adapt.get("gate", 0.0)) > 0.0 and
          any(m != "none" for m in parse_list(config.adapt.methods)))


def reference_statistic(config, feats_held: np.ndarray,
                        cal_bank: patchcore.MemoryBank) -> float:
  """The shift gate's clean reference: the statistic (`tta.gate_statistic_fn`) of held-out
  training normals' patch features `[n, h, w, D]` (or `[n, G, D]`) against `cal_bank`, a bank
  fitted without them, with the key of `config.seed`."""
  z = jax.numpy.asarray(feats_held.reshape(len(feats_held), -1, feats_held.shape[-1]))
  value = tta.gate_statistic_fn(config.adapt)(z, source_of(cal_bank),
                                              tta.gate_key(jax.random.key(config.seed)))
  return float(value)


def gate_reference(config, workdir, ds, variables, extract, timing) -> float | None:
  """`reference_statistic` of `ds` (None when the gate is off), cached next to its memory bank.

  The training images are split as `experiments.fit` splits them for the
  threshold (`fit.calibration_fraction`, seeded); a calibration bank is fitted
  on the kept part with the same coreset settings. The cache file names what
  the value depends on (the bank's fingerprint, the split and the transport
  settings) and is recomputed when any of it changes.
  """
  if not gate_needed(config):
    return None
  f = float(config.fit.calibration_fraction)
  if f <= 0.0:
    raise ConfigError(f"config.adapt.gate={config.adapt.gate} needs held-out training normals: "
                      "set config.fit.calibration_fraction > 0 (e.g. 0.2), or "
                      "config.adapt.gate=0 to adapt without the gate")
  path = bank_path(config, workdir, ds) + ".gate.json"
  key = {"bank": bank_fingerprint(config, ds.category), "calibration_fraction": f,
         **gate_settings(config)}
  if os.path.exists(path):
    try:
      with open(path) as fh:
        rec = json.load(fh)
      if rec.get("key") == key:
        return float(rec["reference"])
    except (OSError, ValueError, KeyError, TypeError):
      cli.warn(f"shift-gate reference {path} is unreadable; computing it again")
  t = time.perf_counter()
  feats = train_features(config, ds, variables, extract, {})
  keep, held = calibration_split(len(ds.train), f, config.seed)
  cal_bank = fit_bank(config, feats[keep], f"{ds.category}: gate reference ")
  ref = reference_statistic(config, feats[held], cal_bank)
  report.atomic_write(path, json.dumps({"key": key, "reference": ref, "n_held": len(held),
                                        "n_kept": len(keep)}, indent=1))
  timing["gate_reference_s"] = time.perf_counter() - t
  return ref


def target_split(n: int, fraction: float, seed: int):
  """Seeded (adapt, eval) index split of a test set of size n; fraction 1.0 -> both all."""
  if fraction <= 0.0:
    return np.zeros(0, np.int64), np.arange(n)
  if fraction >= 1.0:
    return np.arange(n), np.arange(n)
  perm = np.random.default_rng(seed).permutation(n)
  k = max(1, int(round(fraction * n)))
  return np.sort(perm[:k]), np.sort(perm[k:])


def _fractions(config) -> list[float]:
  """`config.shift.adapt_fractions` (comma-separated) if set, else [adapt_fraction]."""
  many = parse_list(config.shift.get("adapt_fractions", ""))
  return [float(f) for f in many] if many else [float(config.shift.adapt_fraction)]


def shift_list(config):
  """[(shift, severity)] of the config; ("clean", 0) for clean."""
  out = []
  sev = [int(s) for s in parse_list(config.shift.severities)]
  for s in parse_list(config.shift.corruptions):
    out.extend([("clean", 0)] if s == "clean" else [(s, v) for v in sev])
  return out


def shifted_images(images, shift, severity, seed, batch):
  """Corrupted copy of uint8 images or float32 clouds `[N, P, 3]` (the same noise for every method)."""
  if shift == "clean":
    return images
  if images.ndim == 3:
    return shifted_points(images, shift, severity, seed, batch)[0]
  from rodajax import corruptions
  return loops.corrupt(shift, images, severity, _shift_key(shift, severity, seed),
                                   batch)


def _shift_key(shift, severity, seed):
  # zlib.crc32, not hash(): str hashes change from one process to the next.
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(f"{shift}/{severity}".encode()))


def shifted_points(clouds, shift, severity, seed, batch):
  """`(shifted clouds [N, P, 3], source index [N, P] or None for clean)`, in batches.

  The source index says which clean point each shifted point comes from
  (corruptions3d.corrupt_indexed), so per-point labels can follow.
  """
  if shift == "clean":
    return clouds, None
  from rodajax import corruptions3d
  key = _shift_key(shift, severity, seed)
  parts = [corruptions3d.corrupt_indexed(clouds[s:s + batch], shift, severity,
                                         jax.random.fold_in(key, i))
           for i, s in enumerate(range(0, len(clouds), batch))]
  return tuple(np.concatenate([np.asarray(p[k]) for p in parts]) for k in (0, 1))


def build_model(config):
  """`(module, variables, extract)`: the backbone and its pure patch-feature extractor.

  `extract(variables, images [B, R, R, 3]) -> [B, h, w, D]` normalises with the
  running statistics in `variables` (source, or adapted ones).
  """
  taps = _taps(config)
  _, variables = backbones.create(config.model.backbone, config.model.weights or None,
                                  taps=taps, seed=config.seed)
  module, extract = build_extractor(config)
  return module, variables, extract


def build_extractor(config):
  """`(module, extract)` of `build_model` without reading any weights (a saved model has them)."""
  taps = _taps(config)
  module = backbones.build(config.model.backbone, taps)
  if data.is_points(config.data):
    d = config.data
    return module, points.make_extractor(module, taps, d.groups, d.group_size, d.group_scale)
  extract = features.make_extractor(module, taps, config.data.crop, config.model.pool,
                                    config.model.out_dim or None)
  return module, extract


def fitted_categories(config, workdir):
  """Yields `(ds, variables, source, extract)` per category, the bank fitted or restored.

  For the analysis experiments (assignments, epsilon): `extract` is jitted.
  """
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  module, variables, extract = build_model(config)
  extract = jax.jit(extract)
  for category in data.categories_of(config.data):
    ds = data.load(config.data, category, seed=config.seed)
    bank, v = fit_or_restore(config, workdir, ds, module, variables, extract, {})
    yield ds, v, source_of(bank), extract


def source_of(bank: patchcore.MemoryBank) -> adapt.Source:
  return adapt.Source(jax.numpy.asarray(bank.bank), jax.numpy.asarray(bank.feature_mean),
                      jax.numpy.asarray(bank.feature_cov))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs every (category, seed, shift, severity, fraction, method) of `config`; returns all records."""
  validate(config)
  methods = parse_list(config.adapt.methods)
  planned = {c: {report.record_id(_record_key(config.data.name, c, sh, sev, m, f, seed))
                 for seed in seeds(config) for sh, sev in shift_list(config)
                 for f in _fractions(config) for m in methods}
             for c in data.categories_of(config.data)}
  run = workdir_lib.open_run(workdir, config, set().union(*planned.values()))
  if run.complete:
    print(workdir_lib.summary_line(run, 0), flush=True)
    return run.records
  records, done = run.records, run.done
  module, variables, extract = build_model(config)
  ctx = Context(config, workdir, module, extract, records, done)
  banks = {"reused": 0, "fitted": 0}
  todo_categories = [c for c in data.categories_of(config.data) if not planned[c] <= done]
  fractions = _fractions(config)

  def prepare(category):
    ds = data.load(config.data, category, seed=config.seed)
    timing = {}
    t_fit = time.perf_counter()
    bank, v_source = fit_or_restore(config, workdir, ds, module, variables, extract, timing)
    banks["reused" if timing.get("restored_bank") else "fitted"] += 1
    timing["fit_s"] = time.perf_counter() - t_fit
    ctx.references[ds.name, category] = gate_reference(config, workdir, ds, v_source, extract,
                                                       timing)
    return ds, v_source, source_of(bank), timing   # the bank on the device once per category

  def shifted_of(ds, shift, severity, seed):
    # One corrupted copy per (seed, shift, severity), shared by every fraction and method.
    if data.is_points(config.data):   # which clean point each shifted one comes from
      return shifted_points(ds.test.images, shift, severity, seed, config.batch_size)
    return shifted_images(ds.test.images, shift, severity, seed, config.batch_size), None

  def todo_of(ds, shift, severity, seed):
    return [(f, m) for f in fractions for m in methods
            if report.record_id(_record_key(ds.name, ds.category, shift, severity, m, f,
                                            seed)) not in done]

  if config.adapt.get("vmap_classes", False) and len(todo_categories) > 1:
    # Every category at once: each (seed, shift, fraction, method) adapts all categories in
    # one vmapped pass (tta.run_classes), then scores them one by one.
    prepared = [prepare(c) for c in todo_categories]
    for seed in seeds(config):
      for shift, severity in shift_list(config):
        work = [(p, todo_of(p[0], shift, severity, seed)) for p in prepared]
        work = [(p, t) for p, t in work if t]
        if not work:
          continue
        shifted = [shifted_of(p[0], shift, severity, seed) for p, _ in work]
        for fraction in fractions:
          for method in methods:
            group = [(p, sh) for (p, t), sh in zip(work, shifted) if (fraction, method) in t]
            if not group:
              continue
            adapted = [None] * len(group)    # None: run_one adapts the category itself
            splits = [target_split(len(p[0].test), fraction, seed) for p, _ in group]
            fns = (ctx.functions(method, variables["params"], classes=True)
                   if method != "none" else None)
            problem = fns and tta.stack_problem(fns.settings, config.adapt,
                                                [len(p[2].bank) for p, _ in group],
                                                [len(a) for a, _ in splits])
            if problem:
              log.warning("%s/%s: categories adapted one by one: %s", shift, method, problem)
            if fns and not problem:
              t0 = time.perf_counter()
              out = tta.run_classes(
                  method, fns, config.adapt,
                  [p[1] for p, _ in group], [p[2] for p, _ in group],
                  [sh[0][a] for (_, sh), (a, _) in zip(group, splits)],
                  [jax.random.key(seed)] * len(group), progress=tqdm,
                  references=[ctx.references.get((p[0].name, p[0].category))
                              for p, _ in group])
              share = (time.perf_counter() - t0) / len(group)
              adapted = [(k, l, {**i, "vmap_classes": len(group)}, share)
                         for k, l, i in zip(*out)]
            for ((ds, v_source, source, timing), sh), a in zip(group, adapted):
              ctx.run_one(ds, v_source, source, timing, shift, severity, seed, sh[0], fraction,
                          fraction == fractions[0], method, sh[1], adapted=a)
        ctx.flush_figures()
  else:
    for category in todo_categories:
      ds, v_source, source, timing = prepare(category)
      for seed in seeds(config):
        for shift, severity in shift_list(config):
          todo = todo_of(ds, shift, severity, seed)
          if not todo:
            continue  # resumed: no corruption to recompute
          shifted, order = shifted_of(ds, shift, severity, seed)
          for fraction, method in todo:
            ctx.run_one(ds, v_source, source, timing, shift, severity, seed, shifted, fraction,
                        fraction == fractions[0], method, order)
          ctx.flush_figures()
  if config.figures:
    report.plot_severity(records, os.path.join(workdir, "figures", "severity.png"))
  print(workdir_lib.summary_line(run, ctx.computed, f"memory banks: {banks['reused']} reused, "
                                 f"{banks['fitted']} fitted"), flush=True)
  return records


def _record_key(dataset, category, shift, severity, method, fraction, seed) -> dict:
  return {"dataset": dataset, "category": category, "shift": shift, "severity": severity,
          "method": method, "variant": None, "adapt_fraction": fraction, "seed": seed}


class Context:
  """What every record of one run shares: config, workdir, model, jitted functions."""

  def __init__(self, config, workdir, module, extract, records, done):
    self.config, self.workdir, self.module, self.extract = config, workdir, module, extract
    self.records, self.done = records, done
    self.fns: dict = {}        # method -> tta.Functions, jitted once per run
    self.computed = 0
    self.mesh = None           # a device mesh, made when config.scoring.shard_bank asks for one
    self._source_eval = None   # (key, evaluation) of the source model on the last eval split
    self._criterion = (None, {})  # (key, tta.run cache) of the last adaptation split
    self.references: dict = {}  # (dataset, category) -> the shift gate's clean reference
    self._figures: dict = {}   # split -> what its method-comparison figure shows (first seed)
    self._centre: dict = {}    # split -> metrics.centre_prior of its masks (a few floats each)
    c = config
    self.points = data.is_points(c.data)
    if self.points:
      self.predict = points.make_predict(extract, c.data.groups, c.scoring.chunk,
                                         c.scoring.neighbours)
    else:
      self.predict = patchcore.make_predict(extract, c.data.crop, c.scoring.sigma,
                                            c.scoring.chunk, c.scoring.reweight)

  def functions(self, method, params, classes: bool = False):
    """`tta.Functions` of `method`, built once (`classes`: vmapped across categories)."""
    if (method, classes) not in self.fns:
      extra = {}
      if self.points:
        extra = {"prepare": encoder_input_of(self.config), "views": augment.point_views,
                 "pseudo": augment.point_pseudo_anomalies}
      self.fns[method, classes] = tta.build(method, self.config.adapt, self.module, self.extract,
                                            params, self.config.data.crop, classes=classes,
                                            **extra)
    return self.fns[method, classes]

  def evaluate(self, variables, source, images, test_eval, masks, desc, regions=None):
    c = self.config
    bank, valid = source.bank, None
    if c.scoring.get("shard_bank", False) and not self.points:
      if self.mesh is None:
        self.mesh = placement.bank_mesh()
      bank, valid = placement.shard_bank(source.bank, self.mesh)
    scores, maps = loops.predict(self.predict, variables, images, bank, c.batch_size,
                                 progress=tqdm, desc=desc, valid=valid)
    finite = bool(np.all(np.isfinite(scores)))
    m = metrics.evaluate(test_eval.labels, scores if finite else np.zeros_like(scores),
                         masks, maps if finite else None, test_eval.types, test_eval.has_mask,
                         regions)
    if not finite:
      m = {**m, "image_auroc": None, "pixel_auroc": None, "aupro": None,
           "error": "non-finite anomaly scores (adaptation diverged?)"}
    return m, scores, maps

  def evaluate_once(self, key, variables, v_source, *args):
    """`evaluate`, reusing the source model's evaluation of the same split.

    Every method whose safeguard falls back to the source parameters (and `none`)
    evaluates the same variables on the same images: computed once per
    (category, shift, severity, seed, fraction).
    """
    if variables is not v_source:
      return self.evaluate(variables, *args)
    if self._source_eval is None or self._source_eval[0] != key:
      self._source_eval = (key, self.evaluate(variables, *args))
    m, scores, maps = self._source_eval[1]
    return dict(m), scores, maps

  def _keep_for_figure(self, ds, shift, severity, seed, method, shifted, eval_idx, test_eval,
                       masks, scores, maps):
    """Holds the picked test images' maps of `method` for `flush_figures`."""
    key = (ds.name, ds.category, shift, severity, seed)
    if key not in self._figures:
      pick = report.figure_picks(test_eval.labels, masks)
      self._figures[key] = {
          "pick": pick, "labels": np.asarray(test_eval.labels), "methods": {},
          "images": data.centre_crop(np.asarray(shifted[eval_idx[pick]]), self.config.data.crop),
          "masks": None if masks is None else np.asarray(masks)[pick]}
    f = self._figures[key]
    f["methods"][method] = (np.asarray(scores), np.asarray(maps)[f["pick"]])

  def flush_figures(self):
    """Draws the method-comparison figure of every split held (two methods or more).

    `figures/<dataset>_<category>_<shift><severity>_methods.png` and `..._methods_roc.png`:
    the first seed's maps of each method run in this process on the same test
    images (`report.save_method_figure`).
    """
    for (name, category, shift, severity, seed), f in self._figures.items():
      if len(f["methods"]) < 2:
        continue
      report.save_method_figure(
          os.path.join(self.workdir, "figures",
                       f"{name}_{category}_{shift}{severity or ''}"),
          f["images"], f["labels"], f["pick"], f["methods"], f["masks"],
          title=f"{name}/{category}: {shift}{f' {severity}' if severity else ''}, seed {seed}")
    self._figures = {}

  def run_one(self, ds, variables, source, timing, shift, severity, seed, shifted, fraction,
              first_fraction, method, order=None, adapted=None):
    """Adapts with `method` on the fraction's adaptation part, evaluates, appends the record.

    `order`: point clouds only, which clean point each shifted point comes from.
    `adapted`: `(kept, last, info, seconds)` of an adaptation already run (all categories
    vmapped together, `adapt.vmap_classes`); then only the evaluation runs here.
    """
    config, workdir = self.config, self.workdir
    category, crop = ds.category, config.data.crop
    adapt_idx, eval_idx = target_split(len(ds.test), fraction, seed)
    test_eval = ds.test.subset(eval_idx)
    regions = None
    if self.points:
      # Per-point labels follow their points through the shift (dropout and density repeat
      # survivors); regions come from the clean coordinates of the same points.
      masks, clean = test_eval.masks, test_eval.images
      if order is not None and masks is not None:
        masks = np.take_along_axis(masks, order[eval_idx], axis=1)
        clean = np.take_along_axis(clean, order[eval_idx][..., None], axis=1)
      regions = None if masks is None else metrics.point_regions(clean, masks)
    else:
      masks = None if test_eval.masks is None else data.centre_crop(test_eval.masks, crop)
    rec = _record_key(ds.name, ds.category, shift, severity, method, fraction, seed)
    t0 = time.perf_counter()
    info = {}
    kept = last = variables
    if adapted is not None:
      kept, last, info, seconds = adapted
      t0 -= seconds          # this category's share of the vmapped pass
    elif method != "none":
      fns = self.functions(method, variables["params"])
      ckey = (ds.name, category, shift, severity, seed, fraction)
      if self._criterion[0] != ckey:   # the source model's held-out criterion, once per split
        self._criterion = (ckey, {})
      kept, last, info = tta.run(method, fns, config.adapt, variables, source,
                                 shifted[adapt_idx], jax.random.key(seed), progress=tqdm,
                                 cache=self._criterion[1],
                                 reference=self.references.get((ds.name, category)))
    t1 = time.perf_counter()
    desc = f"{category}/{shift}{severity or ''}/s{seed}/{method}: score"
    ekey = (ds.name, category, shift, severity, seed, fraction)
    m, scores, maps = self.evaluate_once(ekey, kept, variables, source, shifted[eval_idx],
                                         test_eval, masks, desc, regions)
    t2 = time.perf_counter()
    if "error" in m:
      info["error"] = m.pop("error")
    if "safeguard" in info:
      # The same evaluation without the safeguard (the last step's parameters).
      mu = m if last is kept else self.evaluate_once(
          ekey, last, variables, source, shifted[eval_idx], test_eval, masks,
          desc + " (unguarded)", regions)[0]
      info["unguarded"] = {k: mu.get(k) for k in ("image_auroc", "pixel_auroc", "aupro")}
    rec.update({"image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
                "aupro": m["aupro"], "n_train": len(ds.train), "n_test": len(eval_idx),
                "n_adapt": len(adapt_idx), "seconds": time.perf_counter() - t0,
                "image_f1_max": m["image_f1_max"],
                "per_type_image_auroc": m.get("per_type_image_auroc"),
                "backbone": config.model.backbone, "memory_bank": list(source.bank.shape),
                "adapt_seconds": t1 - t0, "score_seconds": t2 - t1, **info})
    if masks is not None and not self.points:
      # The pixel metrics of a map that ignores the image (its centre), for reading them.
      split = (ds.name, category, seed, fraction)
      if split not in self._centre:
        self._centre[split] = metrics.centre_prior(masks, test_eval.has_mask)
      rec["centre_prior"] = dict(self._centre[split])
    first = first_fraction and seed == seeds(config)[0]   # the split that gets the figures
    if shift == "clean" and method == "none" and first:
      rec["timing"] = {**timing, "scoring_s": t2 - t1,
                       "test_img_per_s": len(eval_idx) / max(t2 - t1, 1e-9)}
      if config.figures and self.points:
        report.save_point_figure(os.path.join(workdir, "figures", f"{ds.name}_{category}"),
                                 test_eval.images, maps, test_eval.labels, scores, masks)
      elif config.figures:
        report.save_figures(os.path.join(workdir, "figures", f"{ds.name}_{category}"),
                            data.centre_crop(test_eval.images, crop), maps,
                            test_eval.labels, scores, masks)
    if config.figures and not self.points and first:
      self._keep_for_figure(ds, shift, severity, seed, method, shifted, eval_idx, test_eval,
                            masks, scores, maps)
    self.records.append(rec)
    self.done.add(report.record_id(rec))
    self.computed += 1
    report.save_records(workdir, self.records)
    log.info("%s", {k: rec[k] for k in report.RECORD_KEYS})
    print(" | ".join(f"{k}={report._fmt(rec[k])}" for k in report.RECORD_KEYS), flush=True)
