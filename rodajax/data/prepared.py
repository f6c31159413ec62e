"""Datasets prepared once with tensorflow-datasets into ArrayRecord, then read by index.

`load_prepared(config_data, category, seed, tfds_dir)` runs the dataset's
own loader (`rodajax.data.load`: decoding, resizing, masks, labels) once,
writes the resized uint8 arrays with a tfds `GeneratorBasedBuilder`
(`file_format="array_record"`), and serves them through
`builder.as_data_source()`: random access, no TensorFlow at run time (none is
installed; tfds writes and reads ArrayRecord without it). A second run with
the same data settings reads the prepared files and never opens an image.

Works for every image dataset `rodajax.data.load` knows (MVTec AD, MVTec
3D-AD RGB, Real-IAD single view, ELPV), and for PACS / DomainBed folders
(`load_domain`: one domain's images, resized, in the index's order; UDA).
The prepared copy lives under `tfds_dir/<fingerprint of the settings>/`.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import numpy as np

from rodajax.data.mvtec import Dataset, ImageSet

SETTINGS = ("name", "root", "resize", "max_train", "train_fraction", "max_test_normal",
            "max_test_anomalous", "anomaly_threshold")


def fingerprint(config_data, category: str, seed: int, test: bool) -> str:
  """A short hash of everything that decides the arrays (settings, category, seed, folder)."""
  d = {k: config_data.get(k) for k in SETTINGS}
  if d.get("root"):
    d["root"] = os.path.abspath(d["root"])
  blob = json.dumps([d, category, seed if config_data.name == "elpv" else 0, test], sort_keys=True)
  return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _builder_class():
  import tensorflow_datasets as tfds

  class RodajaxImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One category's train and test images, resized uint8, with labels, masks and names."""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "resized uint8 images, labels, masks, defect types, file names"}

    # tfds looks for checksums beside the builder's module through importlib.resources,
    # which cannot join paths inside a namespace package (rodajax has no __init__.py).
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      from etils import epath
      return epath.Path(__file__)

    def __init__(self, *, loader: Callable[[], Dataset], size: int, **kwargs):
      self._loader, self._size, self._dataset = loader, size, None
      super().__init__(**kwargs)

    def _info(self):
      s = self._size
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
          "mask": tfds.features.Tensor(shape=(s, s), dtype=np.uint8),
          "label": tfds.features.Scalar(dtype=np.int64),
          "has_mask": tfds.features.Scalar(dtype=np.bool_),
          "masked_set": tfds.features.Scalar(dtype=np.bool_),
          "index": tfds.features.Scalar(dtype=np.int64),
          "type": tfds.features.Text(),
          "name": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      ds = self._loader()
      return {"train": self._generate_examples(ds.train), "test": self._generate_examples(ds.test)}

    def _generate_examples(self, part: ImageSet):
      for i in range(len(part)):
        mask = (np.zeros(part.images.shape[1:3], np.uint8) if part.masks is None
                else (part.masks[i] > 0).astype(np.uint8))
        yield i, {"image": part.images[i], "mask": mask, "label": int(part.labels[i]),
                  "has_mask": bool(part.has_mask[i]), "masked_set": part.masks is not None,
                  "index": i, "type": part.types[i], "name": part.names[i]}

  return RodajaxImages


def _read(source) -> ImageSet:
  n = len(source)
  if n == 0:
    return ImageSet(np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.int64), None,
                    np.zeros(0, bool), [], [])
  rows = [source[i] for i in range(n)]
  rows.sort(key=lambda r: int(r["index"]))        # tfds shuffles records by key hash
  text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
  masked = bool(rows[0]["masked_set"])
  return ImageSet(np.stack([r["image"] for r in rows]),
                  np.asarray([r["label"] for r in rows], np.int64),
                  np.stack([r["mask"] for r in rows]).astype(bool) if masked else None,
                  np.asarray([r["has_mask"] for r in rows], bool),
                  [text(r["type"]) for r in rows], [text(r["name"]) for r in rows])


def load_prepared(config_data, category: str, seed: int, tfds_dir: str,
                  loader: Callable[[], Dataset], test: bool = True) -> tuple[Dataset, bool]:
  """`(dataset, prepared_now)`: the category from its ArrayRecord copy, made on first use.

  `loader()` is the direct loader (`rodajax.data.load`); it runs only when no
  prepared copy of these settings exists.
  """
  data_dir = os.path.join(os.path.abspath(tfds_dir), fingerprint(config_data, category, seed, test))
  builder = _builder_class()(loader=loader, size=int(config_data.resize), data_dir=data_dir,
                             file_format="array_record")
  prepared_now = not builder.is_prepared()
  if prepared_now:
    builder.download_and_prepare()
  sources = builder.as_data_source()
  return Dataset(config_data.name, category, _read(sources["train"]), _read(sources["test"])), \
      prepared_now


def _domain_builder_class():
  import tensorflow_datasets as tfds

  class RodajaxDomain(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One domain of a <root>/<domain>/<class>/<images> tree: resized uint8 images, class, file."""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "resized uint8 images, class names, file names"}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):   # see RodajaxImages
      from etils import epath
      return epath.Path(__file__)

    def __init__(self, *, paths, classes, size: int, decode: Callable, **kwargs):
      self._paths, self._classes, self._size, self._decode = paths, classes, size, decode
      super().__init__(**kwargs)

    def _info(self):
      s = self._size
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
          "index": tfds.features.Scalar(dtype=np.int64),
          "class": tfds.features.Text(), "name": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"images": self._generate_examples()}

    def _generate_examples(self):
      for s in range(0, len(self._paths), 64):
        imgs = self._decode(self._paths[s:s + 64])
        for i, img in enumerate(imgs):
          j = s + i
          yield j, {"image": img, "index": j, "class": self._classes[j], "name": self._paths[j]}

  return RodajaxDomain


def load_domain(index_domain: dict, size: int, tfds_dir: str,
                decode: Callable) -> tuple[np.ndarray, list[str], bool]:
  """`(images [N, size, size, 3] uint8, paths, prepared_now)` of one domain, classes sorted.

  `index_domain`: `{class: [paths]}` (`domains.index_domains(root)[domain]`); `decode(paths)
  -> [n, size, size, 3]` runs only when no prepared copy exists.
  """
  paths = [p for c in sorted(index_domain) for p in index_domain[c]]
  classes = [c for c in sorted(index_domain) for _ in index_domain[c]]
  blob = json.dumps([[os.path.abspath(p) for p in paths], size])
  data_dir = os.path.join(os.path.abspath(tfds_dir), hashlib.sha1(blob.encode()).hexdigest()[:16])
  builder = _domain_builder_class()(paths=paths, classes=classes, size=size, decode=decode,
                                    data_dir=data_dir, file_format="array_record")
  prepared_now = not builder.is_prepared()
  if prepared_now:
    builder.download_and_prepare()
  src = builder.as_data_source()["images"]
  rows = sorted((src[i] for i in range(len(src))), key=lambda r: int(r["index"]))
  return np.stack([r["image"] for r in rows]), paths, prepared_now
