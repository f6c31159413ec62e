"""Domain-folder datasets (`<root>/<domain>/<class>/<images>`: PACS, Office-31,
Office-Home, VisDA) and the one-vs-all protocol of UDA for one-class AD.

`index_domains(root)` lists the images per (domain, class); `elpv_domains()`
gives ELPV in the same shape (domains mono / poly, classes normal / defective).
`one_vs_all(index, source, target, normal_class, ...)` draws, seeded:

  source train   every image of the normal class in the source domain;
  target train   (unlabelled) a `target_train_fraction` share of the normal
                 class's target images, plus images of the other classes from
                 their own train shares, so that anomalies make up
                 `contamination` of the target train set;
  target test    the rest of the normal class's target images (label 0) and of
                 the other classes' (label 1), at most `max_test_per_class`
                 images per anomalous class.

No image is in two parts. Paths only: loading is `images.load_many`.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from rodajax.data.images import DataError, list_images


def index_domains(root: str) -> dict[str, dict[str, list[str]]]:
  """`{domain: {class: [paths]}}` of a `<root>/<domain>/<class>/<images>` tree."""
  if not os.path.isdir(root):
    raise DataError(f"domain dataset folder {root!r} not found; set config.data.root to a folder "
                    "holding <domain>/<class>/<images> (e.g. PACS: photo/dog/*.jpg)")
  out = {}
  for d in sorted(os.listdir(root)):
    dd = os.path.join(root, d)
    if not os.path.isdir(dd) or d.startswith("."):
      continue
    classes = {c: list_images(os.path.join(dd, c)) for c in sorted(os.listdir(dd))
               if os.path.isdir(os.path.join(dd, c)) and not c.startswith(".")}
    classes = {c: p for c, p in classes.items() if p}
    if classes:
      out[d] = classes
  if not out:
    raise DataError(f"{root!r} holds no <domain>/<class>/<images> folders")
  return out


def elpv_domains(anomaly_threshold: float = 0.67) -> dict[str, dict[str, list[str]]]:
  """ELPV as two domains (mono, poly), classes 'normal' (p = 0) and 'defective' (p >= thr)."""
  from rodajax.data.elpv import CELL_TYPES, elpv_index
  paths, prob, types = elpv_index()
  paths = np.asarray(paths)
  return {t: {"normal": list(paths[(types == t) & (prob == 0.0)]),
              "defective": list(paths[(types == t) & (prob >= anomaly_threshold)])}
          for t in CELL_TYPES}


@dataclasses.dataclass
class OneVsAll:
  """Paths and labels of one (source, target, normal class, seed) draw."""
  source_train: list[str]
  target_train: list[str]
  target_train_labels: np.ndarray   # 1 = anomalous; never shown to the method
  target_test: list[str]
  target_test_labels: np.ndarray
  target_test_classes: list[str]


def check_names(index, source: str, target: str, normal_class: str) -> None:
  for d in (source, target):
    if d not in index:
      raise DataError(f"unknown domain {d!r}; known: {', '.join(index)}")
  for d in (source, target):
    if normal_class not in index[d]:
      raise DataError(f"unknown class {normal_class!r} in domain {d!r}; known: "
                      f"{', '.join(index[d])}")


def one_vs_all(index, source: str, target: str, normal_class: str, seed: int = 0,
               contamination: float = 0.1, target_train_fraction: float = 0.5,
               max_test_per_class: int | None = None, max_source: int | None = None,
               min_images: int = 8) -> OneVsAll:
  """The seeded one-vs-all split described in the module docstring."""
  check_names(index, source, target, normal_class)
  if not 0.0 <= contamination < 1.0:
    raise DataError(f"contamination ratio {contamination} must be in [0, 1) (anomalies must be "
                    "the minority of the target train set)")
  if not 0.0 < target_train_fraction < 1.0:
    raise DataError(f"target_train_fraction {target_train_fraction} must be in (0, 1)")
  rng = np.random.default_rng(seed)
  src = list(np.asarray(index[source][normal_class])[rng.permutation(len(index[source][normal_class]))])
  src = src[:max_source] if max_source else src
  tgt = np.asarray(index[target][normal_class])
  tgt = tgt[rng.permutation(len(tgt))]
  n_tr = int(round(target_train_fraction * len(tgt)))
  if len(src) < min_images or n_tr < min_images or len(tgt) - n_tr < min_images:
    raise DataError(f"class {normal_class!r} has {len(src)} source and {len(tgt)} target images: "
                    f"too few for the split (need {min_images} in each part); pick another class "
                    "or lower data.min_images")
  tgt_train, tgt_test = list(tgt[:n_tr]), list(tgt[n_tr:])
  others = [c for c in index[target] if c != normal_class]
  if not others:
    raise DataError(f"domain {target!r} has no class besides {normal_class!r}: no anomalies")
  pool_train, pool_test, pool_test_cls = [], [], []
  for c in others:
    p = np.asarray(index[target][c])
    p = p[rng.permutation(len(p))]
    k = int(round(target_train_fraction * len(p)))
    pool_train += list(p[:k])
    test = list(p[k:])[:max_test_per_class] if max_test_per_class else list(p[k:])
    pool_test += test
    pool_test_cls += [c] * len(test)
  n_anom = int(round(contamination / (1.0 - contamination) * len(tgt_train)))
  if n_anom > len(pool_train):
    raise DataError(f"contamination {contamination} needs {n_anom} anomalous target images, "
                    f"only {len(pool_train)} exist; lower the contamination ratio")
  anom = [pool_train[i] for i in rng.permutation(len(pool_train))[:n_anom]]
  order = rng.permutation(len(tgt_train) + n_anom)
  train = np.asarray(tgt_train + anom)[order]
  train_lab = np.r_[np.zeros(len(tgt_train)), np.ones(n_anom)].astype(np.int32)[order]
  return OneVsAll(src, list(train), train_lab, tgt_test + pool_test,
                  np.r_[np.zeros(len(tgt_test)), np.ones(len(pool_test))].astype(np.int32),
                  [normal_class] * len(tgt_test) + pool_test_cls)
