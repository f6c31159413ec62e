"""tensorflow-datasets ArrayRecord preparation: the same arrays as the direct loader, prepared once."""
import os

import numpy as np
import pytest

from configs import base
from helpers import write_mvtec
from rodajax import data
from rodajax.data import prepared


def _config(root, tfds_dir):
  c = base.get_base_config().data
  c.name, c.root, c.resize, c.tfds_dir = "mvtec", str(root), 64, str(tfds_dir)
  return c


def _same(a, b):
  for part in ("train", "test"):
    x, y = getattr(a, part), getattr(b, part)
    np.testing.assert_array_equal(x.images, y.images)
    np.testing.assert_array_equal(x.labels, y.labels)
    np.testing.assert_array_equal(x.has_mask, y.has_mask)
    assert (x.masks is None) == (y.masks is None)
    if x.masks is not None:
      np.testing.assert_array_equal(x.masks, y.masks)
    assert x.types == y.types and x.names == y.names


def test_prepared_once_then_read_without_decoding(tmp_path):
  pytest.importorskip("array_record")
  write_mvtec(tmp_path / "mv", n_train=5, n_good=3, n_bad=4)
  cfg = _config(tmp_path / "mv", tmp_path / "tfds")
  direct_cfg = cfg.copy_and_resolve_references()
  direct_cfg.tfds_dir = ""
  direct = data.load(direct_cfg, "widget")
  calls = []

  def loader():
    calls.append(1)
    return data.load(direct_cfg, "widget")
  first, made = prepared.load_prepared(cfg, "widget", 0, cfg.tfds_dir, loader)
  assert made and calls == [1]
  _same(direct, first)
  assert first.test.masks is not None and first.test.labels.sum() == 4
  files = [f for _, _, fs in os.walk(tmp_path / "tfds") for f in fs]
  assert any(".array_record" in f for f in files), files
  # Second run: read back, the loader (image decoding) never runs.
  second, made = prepared.load_prepared(cfg, "widget", 0, cfg.tfds_dir, loader)
  assert not made and calls == [1]
  _same(direct, second)
  # Through data.load (the config switch), and a different setting gets its own copy.
  _same(direct, data.load(cfg, "widget"))
  cfg2 = cfg.copy_and_resolve_references()
  cfg2.resize = 48
  assert prepared.fingerprint(cfg2, "widget", 0, True) != prepared.fingerprint(cfg, "widget", 0, True)
  assert data.load(cfg2, "widget").train.images.shape[1:] == (48, 48, 3)


def test_prepared_elpv_without_masks(tmp_path):
  c = base.get_base_config().data
  c.max_train, c.max_test_normal, c.max_test_anomalous, c.resize = 4, 3, 3, 32
  c.tfds_dir = str(tmp_path / "tfds")
  got = data.load(c, "mono", seed=1)
  c.tfds_dir = ""
  _same(data.load(c, "mono", seed=1), got)
  assert got.test.masks is None


def test_prepared_domain_folder(tmp_path):
  """PACS / DomainBed layout: one domain's images prepared once, in the index's order."""
  from PIL import Image
  from rodajax.data import domains, images
  rng = np.random.default_rng(0)
  for c, n in (("dog", 3), ("cat", 4)):
    os.makedirs(tmp_path / "pacs" / "photo" / c)
    for i in range(n):
      Image.fromarray(rng.integers(0, 255, (40, 30, 3)).astype(np.uint8)).save(
          tmp_path / "pacs" / "photo" / c / f"{i}.png")
  index = domains.index_domains(str(tmp_path / "pacs"))["photo"]
  calls = []

  def decode(paths):
    calls.append(len(paths))
    return images.load_many(paths, 32)
  got, paths, made = prepared.load_domain(index, 32, str(tmp_path / "tfds"), decode)
  want = images.load_many(paths, 32)
  assert made and calls == [7] and paths[0].endswith(os.path.join("cat", "0.png"))
  np.testing.assert_array_equal(got, want)
  again, _, made = prepared.load_domain(index, 32, str(tmp_path / "tfds"), decode)
  assert not made and calls == [7]
  np.testing.assert_array_equal(again, want)
