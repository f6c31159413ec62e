"""`train_and_evaluate(config, workdir)` for UDA in one-class AD (one-vs-all protocol).

For every (target domain, normal class, seed, method) of the config: the
seeded one-vs-all split (`rodajax.data.domains.one_vs_all`), the set D aligned
with the source (by method), Deep SVDD + alignment training (`rodajax.uda`),
and the AUC of ||f(x) - mu||^2 on the target test part. The frozen trunk and
psi features of every image are computed once per domain and cached under
`workdir/cache/`; records are written atomically to `workdir/results.json`
as they come, and a rerun skips those already there.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from rodajax import backbones, cluster, losses, metrics, report, uda
from experiments import cli, loops, tta
from experiments import workdir as workdir_lib
from experiments.train import ConfigError
from rodajax.data import domains, images, parse_categories
from rodajax.features import crop_and_normalise

METHODS = ("source_only", "all_target", "cluster_f", "cluster_psi", "few_shot", "oracle")
IDENTITY = ("dataset", "source", "target", "normal_class", "method", "seed")
KEYS = ("dataset", "source", "target", "normal_class", "method", "seed", "auc")


_csv = parse_categories  # "a,b" or ["a", "b"] -> ["a", "b"]


def load_index(config):
  if config.data.name == "elpv":
    return domains.elpv_domains(config.data.anomaly_threshold)
  if config.data.name == "domains":
    return domains.index_domains(config.data.root)
  raise ConfigError(f"config.data.name={config.data.name!r}; use 'domains' (a <root>/<domain>/"
                    "<class> tree: PACS, Office-31, Office-Home, VisDA) or 'elpv'")


def validate(config, index) -> None:
  if config.data.source not in index:
    raise domains.DataError(f"unknown domain {config.data.source!r}; known: {', '.join(index)}")
  if not _csv(config.data.targets):
    raise ConfigError("config.data.targets is empty; name at least one target domain")
  for t in _csv(config.data.targets):
    for c in _all_classes(config, index):
      domains.check_names(index, config.data.source, t, c)
  for m in _csv(config.uda.methods):
    if m not in METHODS:
      raise ConfigError(f"unknown uda method {m!r}; known: {', '.join(METHODS)}")
  if config.uda.alignment not in uda.ALIGNMENTS:
    raise ConfigError(f"unknown uda.alignment {config.uda.alignment!r}; known: "
                      f"{', '.join(uda.ALIGNMENTS)}")
  if config.uda.cluster not in cluster.METHODS:
    raise ConfigError(f"unknown uda.cluster {config.uda.cluster!r}; known: "
                      f"{', '.join(cluster.METHODS)}")
  if not 0.0 <= config.data.contamination < 1.0:
    raise ConfigError(f"config.data.contamination={config.data.contamination} must be in [0, 1)")
  for key, known in (("contrastive", losses.DENOMINATORS), ("bn_bias", uda.BN_BIAS),
                     ("space", uda.SPACES), ("negatives", cluster.NEGATIVES)):
    if config.uda[key] not in known:
      raise ConfigError(f"unknown uda.{key} {config.uda[key]!r}; known: {', '.join(known)}")
  if config.uda.psi == config.model.backbone and "cluster_psi" in _csv(config.uda.methods):
    cli.warn(f"uda.psi={config.uda.psi!r} is f's own backbone: cluster_psi then clusters on f at "
             "initialisation, not on a separate encoder (the paper's psi); set uda.psi to "
             "another backbone or a feature file (file:<npz>)")
  if not 0.0 <= config.uda.trim_share < 1.0:
    raise ConfigError(f"uda.trim_share={config.uda.trim_share} must be in [0, 1) (the share of "
                      "the target set that cluster=trimmed leaves out of D)")
  if not 0.0 < config.uda.negative_share <= 1.0:
    raise ConfigError(f"uda.negative_share={config.uda.negative_share} must be in (0, 1] (the "
                      "share of the target set taken as far negatives)")
  if config.uda.trainable not in uda.TRAINABLE:
    raise ConfigError(f"unknown uda.trainable {config.uda.trainable!r}; known: "
                      f"{', '.join(uda.TRAINABLE)}")


def _all_classes(config, index):
  return _csv(config.data.classes) or sorted(index[config.data.source])


class FeatureCache:
  """Frozen trunk features (f's frozen part) and psi features of every image of a domain.

  Each is computed once per domain and written to `config.cache_dir` (default
  `workdir/cache/`) in its own file (keyed
  by the data, the size and the encoder), so changing psi does not recompute the trunk.
  psi is a bundled or user-supplied backbone name (`backbones.create(name, "pretrained")`:
  efficientnet_lite0/1/2, resnet18/50, wide_resnet50_2 with the user's torchvision weights),
  "f" (cluster on f itself), or "file:<path>.npz": features computed elsewhere (CLIP,
  DINOv2, ...) with arrays `paths` [N] (image paths, absolute or relative to data.root) and
  `features` [N, D].
  """

  def __init__(self, config, workdir, index):
    self.config, self.index = config, index
    self.backbone, self.vars = backbones.create(config.model.backbone, "pretrained")
    if not isinstance(self.backbone, (backbones.EfficientNetLite, backbones.ResNet)):
      raise ConfigError(f"config.model.backbone={config.model.backbone!r}: UDA's f needs an "
                        "image backbone with BatchNorm (efficientnet_lite0/1/2, resnet18/50, "
                        "wide_resnet50_2)")
    try:
      self.start = uda.stage_start(self.backbone, config.model.tail_stage)
    except ValueError as e:
      raise ConfigError(f"config.model.tail_stage={config.model.tail_stage}: {e}") from None
    self.dir = config.get("cache_dir", "") or os.path.join(workdir, "cache")
    self.mem: dict[str, dict] = {}
    psi = config.uda.psi
    self.psi_module = self.psi_vars = self.psi_file = None
    if psi.startswith("file:"):
      self.psi_file = load_psi_file(psi[len("file:"):], config.data.root)
    elif psi != "f":
      self.psi_module, self.psi_vars = backbones.create(psi, "pretrained")
    # The frozen encoders `images -> features`, jitted once per cache with the weights passed as
    # arguments: every domain (and every batch of the same shape) reuses one compiled program.
    self._encoders = {"trunk": functools.partial(
        jax.jit(uda.trunk_features(self.backbone, self.start)), self.vars)}
    if self.psi_module is not None:
      m = self.psi_module
      self._encoders["psi"] = functools.partial(
          jax.jit(lambda v, x: m.apply(v, x, train=False)["pooled"]), self.psi_vars)

  def _path(self, domain, what, encoder):
    c = self.config
    blob = json.dumps([c.data.name, os.path.abspath(c.data.root) if c.data.root else "",
                       domain, c.data.resize, encoder, self.index[domain]], sort_keys=True)
    return os.path.join(self.dir, f"{domain}_{what}_{hashlib.sha1(blob.encode()).hexdigest()[:12]}.npz")

  def domain(self, domain: str) -> dict:
    """`{"paths": [...], "trunk": [N, h, w, C] float32, "psi": [N, D]}` for a domain."""
    if domain in self.mem:
      return self.mem[domain]
    c = self.config
    paths = [p for k in sorted(self.index[domain]) for p in self.index[domain][k]]
    files = {"trunk": self._path(domain, "trunk", [c.model.backbone, c.model.tail_stage]),
             "psi": self._path(domain, "psi", c.uda.psi)}
    out = {}
    for what, path in files.items():
      if os.path.exists(path):
        with np.load(path) as z:
          out[what] = z["x"]
    if self.psi_file is not None:
      out["psi"] = self.psi_file.take(paths)
    elif self.psi_module is None:
      out["psi"] = np.zeros((len(paths), 0), np.float32)
    todo = [w for w in files if w not in out]
    if todo:
      out.update(self._compute(domain, paths, todo))
      os.makedirs(self.dir, exist_ok=True)
      for what in todo:
        tmp = files[what] + ".tmp.npz"
        np.savez(tmp, x=out[what])
        os.replace(tmp, files[what])
    out["trunk"] = out["trunk"].astype(np.float32)
    out["paths"] = paths
    out["pos"] = {p: i for i, p in enumerate(paths)}
    self.mem[domain] = out
    return out

  def _compute(self, domain, paths, todo) -> dict:
    size, bs = self.config.data.resize, self.config.batch_size
    fns = {w: self._encoders[w] for w in ("trunk", "psi") if w in todo}
    if self.config.data.get("tfds_dir", ""):   # images prepared once into ArrayRecord (tfds)
      from rodajax.data import prepared
      pixels = prepared.load_domain(self.index[domain], size, self.config.data.tfds_dir,
                                    lambda p: images.load_many(p, size))[0]
      read = lambda s: pixels[s:s + bs]
    else:
      read = lambda s: images.load_many(paths[s:s + bs], size)
    acc = {w: [] for w in fns}
    for s in tqdm(range(0, len(paths), bs), desc=f"{domain}: frozen {' + '.join(fns)} features"):
      x = crop_and_normalise(jax.numpy.asarray(read(s)), size)
      for w, fn in fns.items():
        # the trunk in float16: identical numbers whether computed now or read back later
        acc[w].append(np.asarray(fn(x)).astype(np.float16 if w == "trunk" else np.float32))
    return {w: np.concatenate(a) for w, a in acc.items()}

  def take(self, domain, paths, what="trunk"):
    d = self.domain(domain)
    return d[what][[d["pos"][p] for p in paths]]


class PsiFile:
  """Precomputed psi features looked up by image path."""

  def __init__(self, source, paths, features, root):
    self.source, self.root = source, root
    self.features = features
    self.pos = {self._norm(p): i for i, p in enumerate(paths)}

  def _norm(self, p):
    p = str(p)
    if self.root and not os.path.isabs(p):
      p = os.path.join(self.root, p)
    return os.path.normpath(os.path.abspath(p))

  def take(self, paths) -> np.ndarray:
    idx = [self.pos.get(self._norm(p)) for p in paths]
    missing = [p for p, i in zip(paths, idx) if i is None]
    if missing:
      raise ConfigError(f"uda.psi file {self.source} has no features for {len(missing)} of "
                        f"{len(paths)} images (first: {missing[0]}); recompute it over every "
                        "image of the domains, with `paths` relative to data.root or absolute")
    return self.features[idx]


def load_psi_file(path: str, root: str) -> PsiFile:
  """Reads a precomputed psi feature file (`paths` [N], `features` [N, D]); refuses bad ones."""
  if not os.path.isfile(path):
    raise ConfigError(f"uda.psi=file:{path}: no such file; write an .npz with arrays `paths` "
                      "(image paths) and `features` [N, D]")
  with np.load(path, allow_pickle=False) as z:
    if "paths" not in z or "features" not in z:
      raise ConfigError(f"uda.psi=file:{path} holds {sorted(z.files)}; it needs `paths` and "
                        "`features`")
    paths, feats = z["paths"], np.asarray(z["features"], np.float32)
  if feats.ndim != 2 or len(feats) != len(paths):
    raise ConfigError(f"uda.psi=file:{path}: features {feats.shape} for {len(paths)} paths; "
                      "expected [N, D] with one row per path")
  if not np.all(np.isfinite(feats)):
    raise ConfigError(f"uda.psi=file:{path}: features hold NaN or inf")
  return PsiFile(path, paths, feats, root)


def dominant_set(method, config, split, cache, model, variables, key, target, embed_fn):
  """`(D, negatives)`, bool masks over the target train set, for `method`.

  D is what the source is aligned with; negatives are the contrastive loss's
  (Eq. 8): the target samples outside D, or with `uda.negatives="far"` (clustering
  and few-shot methods) only the `uda.negative_share` of the target set outside D
  farthest from D's mean in the clustering space (`cluster.far_from`). Oracle:
  D = the true normals, negatives = the true anomalies.
  """
  n = len(split.target_train)
  lab = split.target_train_labels
  if method == "source_only":
    return np.zeros(n, bool), np.zeros(n, bool)
  if method == "all_target":
    return np.ones(n, bool), np.zeros(n, bool)
  if method == "oracle":
    return lab == 0, lab != 0
  if method == "cluster_f" or config.uda.psi == "f":
    feats = loops.embed(embed_fn, variables, cache.take(target, split.target_train),
                        model.out_dim)
  else:
    feats = cache.take(target, split.target_train, "psi")
  if method == "few_shot":
    # D = few_shot_k labelled target normals; the negatives (pseudo-anomalies) are the
    # target samples farthest from them (negatives="far"), or all the others.
    normal = np.flatnonzero(lab == 0)
    d = np.zeros(n, bool)
    d[np.asarray(jax.random.choice(key, normal, (min(config.uda.few_shot_k, len(normal)),),
                                   replace=False))] = True
  else:
    d = cluster.dominant_cluster(feats, config.uda.clusters, key, config.uda.cluster,
                                 trim=config.uda.trim_share)
  if config.uda.negatives == "far":
    return d, cluster.far_from(feats, d, int(np.ceil(config.uda.negative_share * n)))
  return d, ~d


def training_target(ht, dom, neg, alignment):
  """The target rows a run trains on, `(ht, dom)`: D and its negatives for the contrastive
  loss (samples in neither are left out), every row otherwise (MMD / GRL weight by D)."""
  if alignment != "contrastive":
    return ht, dom
  keep = dom | neg
  return ht[keep], dom[keep]


def settings(config, method) -> uda.Settings:
  u = config.uda
  return uda.Settings(alignment="none" if method == "source_only" else u.alignment,
                      lambda_ad=u.lambda_ad, lambda_uda=u.lambda_uda, tau=u.tau, lr=u.lr,
                      steps=u.steps, batch=u.batch, trainable=u.trainable, grl_scale=u.grl_scale,
                      contrastive=u.contrastive, bn_bias=u.bn_bias)


class StepFunctions:
  """The jitted UDA steps and embeddings, built once per experiment and reused across runs."""

  def __init__(self):
    self._steps, self._embeds = {}, {}

  def embed(self, model: uda.Model):
    """Jitted `uda.make_embed(model)`."""
    key = model
    if key not in self._embeds:
      self._embeds[key] = jax.jit(uda.make_embed(model))
    return self._embeds[key]

  def run_step(self, model: uda.Model, s: uda.Settings, params_template, class_batch: int):
    """`loops.uda_run_step` (runs mapped together) for `model`, `s` and the group size."""
    key = ("runs", model, s, class_batch)
    if key not in self._steps:
      self._steps[key] = loops.uda_run_step(model, s, params_template, class_batch)
    return self._steps[key]

  def step(self, model: uda.Model, s: uda.Settings, params_template):
    """`(step, embed, optimizer)` for `model` and settings `s` (`loops.train_uda`'s `fns`)."""
    key = (model, s)
    if key not in self._steps:
      step, opt = uda.make_step(model, s, params_template)
      self._steps[key] = (jax.jit(step), self.embed(model), opt)
    return self._steps[key]


class Prep(NamedTuple):
  """What one run trains on; `ht_train` / `dom_train` are `training_target`'s rows."""
  model: uda.Model
  variables: dict
  hs: np.ndarray
  ht: np.ndarray
  hte: np.ndarray
  dom: np.ndarray
  neg: np.ndarray
  settings: uda.Settings
  k_init: jax.Array
  k_train: jax.Array
  ht_train: np.ndarray
  dom_train: np.ndarray


def prepare_one(config, cache, split, method, seed, target, fns: "StepFunctions") -> Prep:
  """What one run trains on (`Prep`)."""
  k_init, k_dom, k_train = jax.random.split(jax.random.key(seed), 3)
  hs = cache.take(config.data.source, split.source_train)
  ht = cache.take(target, split.target_train)
  hte = cache.take(target, split.target_test)
  model, variables = uda.init_model(cache.backbone, cache.vars, cache.start, config.model.out_dim,
                                    k_init, hs, normalise=config.uda.space == "sphere")
  dom, neg = dominant_set(method, config, split, cache, model, variables, k_dom, target,
                          fns.embed(model))
  s_run = settings(config, method)
  return Prep(model, variables, hs, ht, hte, dom, neg, s_run, k_init, k_train,
              *training_target(ht, dom, neg, s_run.alignment))


def score_one(split, prep, trained, embed_fn) -> dict:
  """The record's numbers of one trained run."""
  v, mu, info = trained
  s = np.sum((loops.embed(embed_fn, v, prep.hte, prep.model.out_dim) - mu) ** 2, axis=1)
  lab, dom, neg = split.target_train_labels, prep.dom, prep.neg
  return {"auc": metrics.auroc(split.target_test_labels, s), **info,
          "n_source": len(prep.hs), "n_target_train": len(prep.ht),
          "n_target_test": len(prep.hte), "n_target_anomalous": int(lab.sum()),
          "d_size": int(dom.sum()),
          "d_purity": float(np.mean(lab[dom] == 0)) * 100 if dom.any() else None,
          # labels used for reporting only: how many negatives, and the anomalous share of them
          "neg_size": int(neg.sum()),
          "neg_anomalous": float(np.mean(lab[neg] != 0)) * 100 if neg.any() else None}


def run_one(config, cache, split, method, seed, target, fns: StepFunctions | None = None):
  """Trains and scores one (split, method, seed); returns the record's numbers.

  `fns` (a `StepFunctions`) reuses compiled steps across runs.
  """
  fns = fns or StepFunctions()
  p = prepare_one(config, cache, split, method, seed, target, fns)
  step_fns = fns.step(p.model, p.settings, uda.init_params(p.model, p.variables, p.k_init))
  trained = loops.train_uda(p.model, step_fns, p.variables, p.hs, p.ht_train, p.dom_train,
                            p.settings, p.k_train)
  return score_one(split, p, trained, step_fns[1])


def run_many(config, cache, splits, method, seeds_, target, fns: StepFunctions) -> list[dict]:
  """`run_one` for several (class, seed) runs of one (target, method), trained together.

  One mapped step per iteration (`loops.train_uda_runs`; `config.uda.vmap_runs`); the same
  numbers as `run_one` run by run, to float rounding (tests/test_uda.py).
  """
  preps = [prepare_one(config, cache, sp, method, sd, target, fns)
           for sp, sd in zip(splits, seeds_)]
  model, s_run = preps[0].model, preps[0].settings
  template = uda.init_params(model, preps[0].variables, preps[0].k_init)
  run_step = fns.run_step(model, s_run, template, tta.class_batch(config.uda))
  trained = loops.train_uda_runs(model, run_step, [p.variables for p in preps],
                                 [p.hs for p in preps], [p.ht_train for p in preps],
                                 [p.dom_train for p in preps], s_run,
                                 [p.k_train for p in preps], fns.embed(model))
  return [score_one(sp, p, t, fns.embed(model)) for sp, p, t in zip(splits, preps, trained)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  index = load_index(config)
  validate(config, index)
  classes = _all_classes(config, index)
  jobs = [(t, c, seed, m) for t in _csv(config.data.targets) for c in classes
          for seed in range(config.seed, config.seed + config.seeds) for m in _csv(config.uda.methods)]
  ident = lambda r: tuple(r.get(k) for k in IDENTITY)
  planned = [ident({"dataset": config.data.dataset_name, "source": config.data.source,
                    "target": t, "normal_class": c, "method": m, "seed": seed})
             for t, c, seed, m in jobs]
  run = workdir_lib.open_run(workdir, config, planned, ident)
  if run.complete:
    print(workdir_lib.summary_line(run, 0), flush=True)
    return run.records
  records, done = run.records, run.done
  cache = FeatureCache(config, workdir, index)
  fns = StepFunctions()
  computed = 0
  def split_of(t, c, seed):
    return domains.one_vs_all(index, config.data.source, t, c, seed, config.data.contamination,
                              config.data.target_train_fraction,
                              config.data.max_test_per_class or None,
                              config.data.max_source or None, config.data.min_images)

  def finish(t, c, seed, m, numbers, seconds):
    nonlocal computed
    rec = {"dataset": config.data.dataset_name, "source": config.data.source, "target": t,
           "normal_class": c, "method": m, "seed": seed, **numbers,
           "alignment": None if m == "source_only" else config.uda.alignment,
           "contamination": config.data.contamination, "seconds": seconds}
    records.append(rec)
    done.add(tuple(rec[k] for k in IDENTITY))
    save(workdir, records)
    computed += 1
    print(" | ".join(f"{k}={report._fmt(rec[k])}" for k in KEYS), flush=True)

  todo = [j for j in jobs if ident({"dataset": config.data.dataset_name,
                                    "source": config.data.source, "target": j[0],
                                    "normal_class": j[1], "seed": j[2], "method": j[3]}) not in done]
  if config.uda.get("vmap_runs", False):
    # Every (class, seed) of one (target, method) trained together: one mapped step per iteration.
    groups = {}
    for t, c, seed, m in todo:
      groups.setdefault((t, m), []).append((c, seed))
    for (t, m), runs in tqdm(groups.items(), desc="uda run groups"):
      t0 = time.perf_counter()
      splits = [split_of(t, c, seed) for c, seed in runs]
      out = run_many(config, cache, splits, m, [seed for _, seed in runs], t, fns)
      share = (time.perf_counter() - t0) / len(runs)
      for (c, seed), numbers in zip(runs, out):
        finish(t, c, seed, m, {**numbers, "vmap_runs": len(runs)}, share)
  else:
    for t, c, seed, m in tqdm(todo, desc="uda runs"):
      t0 = time.perf_counter()
      numbers = run_one(config, cache, split_of(t, c, seed), m, seed, t, fns)
      finish(t, c, seed, m, numbers, time.perf_counter() - t0)
  print(workdir_lib.summary_line(run, computed), flush=True)
  return records


def table(records, row="method", col="target", value="auc") -> str:
  """Rows: methods; columns: targets; cells: mean +- std over classes and seeds (Table 5)."""
  return report.pivot(records, row, col, value)


def _markdown(records) -> str:
  return ("## AUC (%), mean ± std over normal classes and seeds\n\n" + table(records) +
          "\n## Per normal class (mean over targets and seeds)\n\n" +
          table(records, "normal_class", "method") + "\n## All records\n\n" +
          report.markdown_table(records, KEYS + ("d_size", "d_purity", "var_ratio", "seconds")))


def save(workdir, records):
  report.save_records(workdir, records, markdown=_markdown)
