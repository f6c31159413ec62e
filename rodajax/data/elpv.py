"""ELPV: 2,624 real electroluminescence images of solar cells (Buerhop-Lutz et al. 2018;
Deitsch et al. 2019), shipped by the PyPI package `elpv-dataset` (CC BY-NC-SA 4.0).

Each 300x300 grey cell has a defect probability in {0, 1/3, 2/3, 1} and a type
(mono / poly crystalline). Normal = probability 0; anomalous = probability >=
`anomaly_threshold` (default 0.67, i.e. 2/3 and 1); cells in between are left
out. The normal cells of a type are split by a seeded permutation into train
and test.
"""
from __future__ import annotations

import os

import numpy as np

from rodajax.data.images import DataError, load_many
from rodajax.data.mvtec import Dataset, ImageSet

CELL_TYPES = ("mono", "poly")


def elpv_index():
  """(paths, probabilities, types) from the package's labels.csv."""
  try:
    import elpv_dataset
  except ImportError as e:
    raise DataError("the ELPV default needs the PyPI package 'elpv-dataset': "
                    "pip install elpv-dataset") from e
  d = os.path.join(os.path.dirname(elpv_dataset.__file__), "data")
  rows = np.genfromtxt(os.path.join(d, "labels.csv"), dtype=["|S19", "<f8", "|S4"],
                       names=["path", "probability", "type"])
  paths = [os.path.join(d, p) for p in np.char.decode(rows["path"])]
  return paths, rows["probability"].astype(np.float64), np.char.decode(rows["type"])


def load_elpv(cell_type: str = "mono", resize: int = 256, seed: int = 0,
              train_fraction: float = 0.5, max_train: int | None = 200,
              max_test_normal: int | None = 100, max_test_anomalous: int | None = 100,
              anomaly_threshold: float = 0.67) -> Dataset:
  """One ELPV cell type as an anomaly-detection dataset (no pixel masks)."""
  if cell_type not in CELL_TYPES:
    raise DataError(f"unknown ELPV cell type {cell_type!r}; known: {', '.join(CELL_TYPES)}")
  if not 0.0 < train_fraction < 1.0:
    raise DataError(f"data.train_fraction must be in (0, 1), got {train_fraction}")
  paths, prob, types = elpv_index()
  paths = np.asarray(paths)
  rng = np.random.default_rng(seed)
  normal = np.flatnonzero((types == cell_type) & (prob == 0.0))
  anomalous = np.flatnonzero((types == cell_type) & (prob >= anomaly_threshold))
  normal = normal[rng.permutation(len(normal))]
  anomalous = anomalous[rng.permutation(len(anomalous))]
  n_train = int(round(train_fraction * len(normal)))
  train, test_n = normal[:n_train][:max_train], normal[n_train:][:max_test_normal]
  test_a = anomalous[:max_test_anomalous]
  if len(train) == 0 or len(test_n) == 0 or len(test_a) == 0:
    raise DataError("ELPV split is empty; raise data.max_train / max_test_* or lower "
                    "data.anomaly_threshold")
  test_idx = np.concatenate([test_n, test_a])
  labels = np.r_[np.zeros(len(test_n)), np.ones(len(test_a))].astype(np.int32)
  tys = ["good"] * len(test_n) + ["defective"] * len(test_a)
  tr = ImageSet(load_many(list(paths[train]), resize), np.zeros(len(train), np.int32), None,
                np.ones(len(train), bool), ["good"] * len(train), list(paths[train]))
  te = ImageSet(load_many(list(paths[test_idx]), resize), labels, None,
                np.zeros(len(test_idx), bool), tys, list(paths[test_idx]))
  return Dataset("elpv", cell_type, tr, te)
