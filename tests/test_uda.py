"""UDA for one-class AD: losses, clustering, Deep SVDD training, one-vs-all splits, command."""
import functools
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from rodajax import backbones, cluster, losses, uda
from rodajax.data import DataError, domains
from experiments import loops, uda_train


def test_contrastive_loss_hand_computed():
  zs = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  zt = jnp.array([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  dom = jnp.array([True, False, False])
  tau = 0.5
  # cos(zs, zt) = [[1, 0, -1], [0, 1, 0]]; positive: zt[0]; negatives: zt[1], zt[2].
  l0 = -math.log(math.exp(1 / tau) / (math.exp(0 / tau) + math.exp(-1 / tau)))
  l1 = -math.log(math.exp(0 / tau) / (math.exp(1 / tau) + math.exp(0 / tau)))
  got = float(losses.contrastive_alignment(zs, zt, dom, tau))
  assert got == pytest.approx((l0 + l1) / 2, rel=1e-5)
  # Every sample in D: the denominator falls back to all target samples.
  all_dom = float(losses.contrastive_alignment(zs[:1], zt, jnp.ones(3, bool), tau))
  den = sum(math.exp(c / tau) for c in (1, 0, -1))
  want = np.mean([-math.log(math.exp(c / tau) / den) for c in (1, 0, -1)])
  assert all_dom == pytest.approx(want, rel=1e-5)
  assert float(losses.contrastive_alignment(zs, zt, jnp.zeros(3, bool), tau)) == 0.0


def test_infonce_denominator_hand_computed_and_both_bounds():
  zs = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  zt = jnp.array([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  dom = jnp.array([True, False, False])
  tau = 0.5
  # InfoNCE: the positive joins the denominator. cos rows as above.
  e = lambda c: math.exp(c / tau)
  l0 = -math.log(e(1) / (e(1) + e(0) + e(-1)))
  l1 = -math.log(e(0) / (e(0) + e(1) + e(0)))
  got = float(losses.contrastive_alignment(zs, zt, dom, tau, "infonce"))
  assert got == pytest.approx((l0 + l1) / 2, rel=1e-5)
  # Every sample in D: each pair's denominator is every target sample, once.
  all_dom = float(losses.contrastive_alignment(zs[:1], zt, jnp.ones(3, bool), tau, "infonce"))
  want = np.mean([-math.log(e(c) / (e(1) + e(0) + e(-1))) for c in (1, 0, -1)])
  assert all_dom == pytest.approx(want, rel=1e-5)
  # Bounds: as written, >= -2/tau + ln M (M negatives), reached when the source points at
  # the positive and away from every negative; InfoNCE >= 0.
  tau, m = 0.1, 16
  zs = jnp.tile(jnp.array([[1.0, 0.0]]), (4, 1))
  zt = jnp.concatenate([jnp.array([[2.0, 0.0]]), jnp.tile(jnp.array([[-1.0, 0.0]]), (m, 1))])
  dom = jnp.arange(m + 1) == 0
  assert float(losses.contrastive_alignment(zs, zt, dom, tau)) == pytest.approx(
      -2 / tau + math.log(m), rel=1e-5)
  assert 0 <= float(losses.contrastive_alignment(zs, zt, dom, tau, "infonce")) < 1e-6
  rng = np.random.default_rng(0)
  for _ in range(5):
    a, b = rng.normal(size=(8, 4)), rng.normal(size=(m + 4, 4))
    d = jnp.asarray(rng.random(m + 4) < 0.3)
    assert float(losses.contrastive_alignment(a, b, d, tau)) >= -2 / tau + math.log(int((~d).sum())) - 1e-4
    assert float(losses.contrastive_alignment(a, b, d, tau, "infonce")) >= 0
  with pytest.raises(ValueError, match="unknown contrastive denominator 'nce'"):
    losses.contrastive_alignment(zs, zt, dom, tau, "nce")


def test_mmd_identical_zero_shifted_positive_and_weights_select_a_subset():
  x = jax.random.normal(jax.random.key(0), (64, 5))
  assert abs(float(losses.mmd(x, x))) < 1e-6
  assert float(losses.mmd(x, x + 2.0)) > 0.1
  y = jnp.concatenate([x[:32] + 0.5, x[32:] + 50.0])
  w = jnp.r_[jnp.ones(32), jnp.zeros(32)]
  # Zero-weight samples do not count as targets (they still enter the median bandwidth).
  full = jnp.concatenate([x, y])
  assert float(losses.mmd(x, y, y_weights=w)) < float(losses.mmd(x, y))
  assert float(losses.mmd(x, y, y_weights=jnp.ones(64))) == pytest.approx(float(losses.mmd(x, y)), rel=1e-5)
  del full


def test_gradient_reversal_flips_the_gradient():
  f = lambda x: jnp.sum(3.0 * losses.gradient_reversal(x, 0.5) ** 2)
  x = jnp.array([1.0, -2.0])
  np.testing.assert_allclose(jax.grad(f)(x), -0.5 * 6.0 * x)
  assert np.array_equal(losses.gradient_reversal(x, 0.5), x)


def test_kmeans_finds_planted_clusters_and_the_dominant_one():
  rng = np.random.default_rng(0)
  centres = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
  sizes = (50, 20, 10)
  x = np.concatenate([c + 0.3 * rng.normal(size=(n, 3)) for c, n in zip(centres, sizes)])
  truth = np.r_[np.ones(50, bool), np.zeros(30, bool)]
  perm = rng.permutation(80)
  lab = np.asarray(cluster.kmeans_labels(jnp.asarray(x[perm]), 3, jax.random.key(0)))
  # The three planted blobs are recovered exactly (up to label names).
  for s in range(3):
    blob = np.r_[np.zeros(sum(sizes[:s])), np.ones(sizes[s]), np.zeros(80 - sum(sizes[:s + 1]))]
    assert len(set(lab[blob[perm] == 1])) == 1
  for method in ("kmeans", "gmm", "meanshift"):
    d = cluster.dominant_cluster(x[perm], 3, jax.random.key(0), method)
    np.testing.assert_array_equal(d, truth[perm])
  # trimmed keeps 1 - 0.2 of the set: the whole largest blob plus the 14 nearest others.
  d = cluster.dominant_cluster(x[perm], 3, jax.random.key(0), "trimmed", trim=0.2)
  assert d.sum() == 64 and d[truth[perm]].all()
  with pytest.raises(ValueError, match="K=81 must be in 1..80"):
    cluster.dominant_cluster(x, 81, jax.random.key(0))


def test_trimmed_mean_mask_is_a_concentration_fixed_point():
  rng = np.random.default_rng(1)
  # 80 normal points in a unit blob and 20 far ones: trimming 20% leaves exactly the blob.
  x = np.concatenate([rng.normal(size=(80, 4)), 10.0 + rng.normal(size=(20, 4))])
  np.testing.assert_array_equal(np.asarray(cluster.trimmed_mean_mask(x, 80)),
                                np.r_[np.ones(80, bool), np.zeros(20, bool)])
  # On structureless data: the mask is the `keep` points nearest to its own mean (a fixed
  # point of the concentration step), and its trimmed sum of squares is no larger than that
  # of one step from the mean of all points (computed here with numpy).
  y = rng.normal(size=(60, 3)) * np.array([3.0, 1.0, 0.5])
  y[:10] += 4.0
  keep = 42

  def nearest(centre):
    m = np.zeros(len(y), bool)
    m[np.argsort(((y - centre) ** 2).sum(1), kind="stable")[:keep]] = True
    return m

  def ss(m):
    return ((y[m] - y[m].mean(0)) ** 2).sum()

  got = np.asarray(cluster.trimmed_mean_mask(y, keep))
  assert got.sum() == keep
  np.testing.assert_array_equal(got, nearest(y[got].mean(0)))
  assert ss(got) <= ss(nearest(y.mean(0))) + 1e-9
  with pytest.raises(ValueError, match="keep=0"):
    cluster.trimmed_mean_mask(y, 0)
  with pytest.raises(ValueError, match="trim share 1.0"):
    cluster.dominant_cluster(y, 3, jax.random.key(0), "trimmed", trim=1.0)


def test_far_negatives_are_the_samples_outside_d_farthest_from_its_mean():
  # Unit vectors at angles (degrees); D = the three near 0, whose mean is (c, 0) with
  # c = (1 + 2 cos 10) / 3. Outside D, by distance from it: 180 > 120 > 60 > 30 (the
  # distance grows with the angle on the circle). Scaling a row changes nothing
  # (normalised), so row 5 is given length 7.
  ang = np.deg2rad([0, 10, -10, 30, 60, 120, 180])
  x = np.stack([np.cos(ang), np.sin(ang)], 1)
  x[5] *= 7.0
  d = np.array([1, 1, 1, 0, 0, 0, 0], bool)
  np.testing.assert_array_equal(cluster.far_from(x, d, 2), [0, 0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(cluster.far_from(x, d, 3), [0, 0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(cluster.far_from(x, d, 10), ~d)   # fewer outside D than m
  assert not cluster.far_from(x, np.zeros(7, bool), 2).any()      # no D, no centre
  assert not cluster.far_from(x, d, 0).any()
  # The rows a run trains on: D and its negatives for the contrastive loss, all otherwise.
  ht = np.arange(7.0)[:, None]
  neg = cluster.far_from(x, d, 2)
  h, dm = uda_train.training_target(ht, d, neg, "contrastive")
  np.testing.assert_array_equal(h[:, 0], [0, 1, 2, 5, 6])
  np.testing.assert_array_equal(dm, [1, 1, 1, 0, 0])
  h, dm = uda_train.training_target(ht, d, neg, "mmd")
  assert h is ht and dm is d


@pytest.fixture(scope="module")
def lite():
  return backbones.create("efficientnet_lite0", "pretrained")


def test_deep_svdd_loss_decreases_without_collapse(lite):
  module, variables = lite
  start = uda.stage_start(module, 7)
  rng = np.random.default_rng(0)
  from helpers import texture
  from rodajax.features import crop_and_normalise
  imgs = np.stack([np.clip(texture(rng, 64).astype(int) + rng.integers(-60, 60, 3), 0, 255)
                   for _ in range(40)]).astype(np.uint8)
  trunk = functools.partial(jax.jit(uda.trunk_features(module, start)), variables)
  hs = np.asarray(trunk(crop_and_normalise(jnp.asarray(imgs), 64)))
  model, v = uda.init_model(module, variables, start, 16, jax.random.key(0), jnp.asarray(hs))
  # f = head(tail(trunk(x))): the split EfficientNet equals the whole one.
  full = jax.jit(lambda x: module.apply(variables, x)["pooled"])(
      crop_and_normalise(jnp.asarray(imgs[:4]), 64))
  np.testing.assert_allclose(jax.jit(model.apply)(v, hs[:4]), full @ v["params"]["head"]["kernel"],
                             rtol=1e-3, atol=1e-4)
  s = uda.Settings(alignment="none", steps=15, batch=16, lr=1e-3)
  fns = uda_train.StepFunctions().step(model, s, uda.init_params(model, v, jax.random.key(2)))
  v2, mu, info = loops.train_uda(model, fns, v, hs, hs[:8], np.zeros(8, bool), s,
                                 jax.random.key(1))
  assert info["l_ad_last"] < 0.7 * info["l_ad_first"]
  assert info["var_ratio"] > 1e-2 and "warning" not in info
  # Only BN affine parameters and the head moved.
  from flax import traverse_util
  a, b = traverse_util.flatten_dict(v["params"]), traverse_util.flatten_dict(v2["params"])
  labels = traverse_util.flatten_dict(uda.param_labels(v["params"]))
  assert all(np.array_equal(a[k], b[k]) for k in a if labels[k] == "frozen")
  assert any(not np.array_equal(a[k], b[k]) for k in a if k[0] == "head")
  # The no-bias rule: every BatchNorm shift is frozen (by default), every BN scale trains.
  bn = {k for k in a if k[-1] == "scale"}
  assert bn and all(labels[k] == "train" for k in bn)
  assert all(labels[k[:-1] + ("bias",)] == "frozen" for k in bn)
  assert any(not np.array_equal(a[k], b[k]) for k in bn)
  trained = traverse_util.flatten_dict(uda.param_labels(v["params"], bn_bias="trained"))
  assert all(trained[k[:-1] + ("bias",)] == "train" for k in bn)
  with pytest.raises(ValueError, match="unknown uda.bn_bias 'x'"):
    uda.param_labels(v["params"], bn_bias="x")
  sc = np.sum((loops.embed(fns[1], v2, hs, model.out_dim) - mu) ** 2, axis=1)
  assert sc.shape == (40,) and np.all(np.isfinite(sc))
  # Deep SVDD on the sphere: unit-norm features, the same parameters.
  sphere, vs = uda.init_model(module, variables, start, 16, jax.random.key(0), jnp.asarray(hs),
                              normalise=True)
  z, zf = (loops.embed(jax.jit(uda.make_embed(m)), v, hs[:6], 16) for m in (sphere, model))
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(z, zf / np.linalg.norm(zf, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,stage", [("resnet18", 3), ("resnet18", 1)])
def test_trunk_then_tail_is_the_whole_backbone(name, stage):
  """f = tail(trunk(x)) equals the backbone's own pooled features for a ResNet f (the
  EfficientNet-Lite split: test_deep_svdd_loss_decreases_without_collapse); the model's tail holds the
  backbone's (here: seeded) weights."""
  module, variables = backbones.create(name, None, seed=3)
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  start = uda.stage_start(module, stage)
  # Eager here: a ResNet-18 at 2 x 64 x 64 compiles slower as three jitted programs (32 s in
  # the xdist run) than op by op (17 s), whose op compilations the next case reuses.
  h = uda.trunk_features(module, start)(variables, x)
  full = module.apply(variables, x, train=False)["pooled"]
  tail = uda.tail_module(module, start)
  np.testing.assert_allclose(tail.apply(variables, h, train=False)["pooled"], full,
                             rtol=1e-4, atol=1e-5)
  model, v = uda.init_model(module, variables, start, 8, jax.random.key(1), h)
  from flax import traverse_util
  got = traverse_util.flatten_dict(v["params"]["backbone"])
  src = traverse_util.flatten_dict(variables["params"])
  assert got and all(np.array_equal(got[k], src[k]) for k in got)
  z = model.apply(v, h)
  np.testing.assert_allclose(z, full @ v["params"]["head"]["kernel"], rtol=1e-4, atol=1e-5)
  if name == "resnet18":
    with pytest.raises(ValueError, match="ResNet stage 5 does not exist"):
      uda.stage_start(module, 5)


def _index(n_classes=4, n=20, domains_=("a", "b")):
  return {d: {f"c{k}": [f"/{d}/c{k}/{i}.png" for i in range(n)] for k in range(n_classes)}
          for d in domains_}


def test_one_vs_all_splits_are_disjoint_and_honour_contamination():
  idx = _index(n=40)
  for r in (0.0, 0.1, 0.3):
    sp = domains.one_vs_all(idx, "a", "b", "c1", seed=3, contamination=r)
    parts = sp.source_train + sp.target_train + sp.target_test
    assert len(parts) == len(set(parts))
    assert all(p.startswith("/a/c1/") for p in sp.source_train)
    n_anom = int(sp.target_train_labels.sum())
    assert n_anom == round(r / (1 - r) * 20)
    assert abs(n_anom / len(sp.target_train) - r) < 0.02
    for p, y in zip(sp.target_train, sp.target_train_labels):
      assert p.startswith("/b/c1/") == (y == 0)
    for p, y, c in zip(sp.target_test, sp.target_test_labels, sp.target_test_classes):
      assert p.startswith(f"/b/{c}/") and (c == "c1") == (y == 0)
  a = domains.one_vs_all(idx, "a", "b", "c1", seed=3)
  b = domains.one_vs_all(idx, "a", "b", "c1", seed=3)
  assert a.target_train == b.target_train
  assert domains.one_vs_all(idx, "a", "b", "c1", seed=4).target_train != a.target_train


def test_bad_input_is_clear():
  idx = _index()
  with pytest.raises(DataError, match="unknown domain 'z'; known: a, b"):
    domains.one_vs_all(idx, "a", "z", "c1")
  with pytest.raises(DataError, match="unknown class 'dog' in domain 'a'; known: c0, c1"):
    domains.one_vs_all(idx, "a", "b", "dog")
  with pytest.raises(DataError, match=r"contamination ratio 1.0 must be in \[0, 1\)"):
    domains.one_vs_all(idx, "a", "b", "c1", contamination=1.0)
  with pytest.raises(DataError, match="contamination ratio -0.1"):
    domains.one_vs_all(idx, "a", "b", "c1", contamination=-0.1)
  small = _index(n=6)
  with pytest.raises(DataError, match="too few for the split"):
    domains.one_vs_all(small, "a", "b", "c1")
  with pytest.raises(DataError, match="not found"):
    domains.index_domains("/no/such/folder")
  from configs import uda as uda_configs
  from experiments.train import ConfigError
  for key, value, message in (("negatives", "nope", "unknown uda.negatives 'nope'; known: outside, far"),
                              ("negative_share", 0.0, r"uda.negative_share=0.0 must be in \(0, 1\]"),
                              ("contrastive", "x", "unknown uda.contrastive 'x'; known: negatives, infonce")):
    c = uda_configs.get_config("pacs")
    c.data.source, c.data.targets, c.uda[key] = "a", ("b",), value
    with pytest.raises(ConfigError, match=message):
      uda_train.validate(c, idx)


def _write_domains(root, size=64):
  rng = np.random.default_rng(0)
  for d, tint in (("src", 0), ("tgt", 60)):
    for k, colour in enumerate(([200, 40, 40], [40, 200, 40], [40, 40, 200])):
      os.makedirs(os.path.join(root, d, f"k{k}"), exist_ok=True)
      for i in range(16):
        img = np.clip(np.array(colour) + tint + rng.normal(0, 20, (size, size, 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(os.path.join(root, d, f"k{k}", f"{i}.png"))


def test_uda_command_writes_records_and_resumes(tmp_path):
  _write_domains(tmp_path / "data")
  work = tmp_path / "work"
  # psi from a precomputed feature file (paths relative to the root): each image's mean colour,
  # which separates the classes exactly, so the dominant cluster is the normal class.
  rel = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "data")
               for d, _, fs in os.walk(tmp_path / "data") for f in fs)
  cols = [np.asarray(Image.open(tmp_path / "data" / p), np.float32).mean((0, 1)) for p in rel]
  np.savez(tmp_path / "psi.npz", paths=np.array(rel), features=np.stack(cols))
  cmd = [sys.executable, "-m", "experiments.uda", "--config", os.path.join(ROOT, "configs/pacs.py"),
         f"--config.data.root={tmp_path / 'data'}", "--config.data.source=src",
         "--config.data.targets=tgt", "--config.data.classes=k0", "--config.data.resize=64",
         "--config.seeds=2", "--config.uda.steps=3", "--config.uda.batch=8",
         "--config.uda.methods=source_only,cluster_psi,oracle", "--config.data.min_images=4",
         "--config.data.contamination=0.2", f"--config.uda.psi=file:{tmp_path / 'psi.npz'}",
         f"--workdir={work}"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  recs = json.load(open(work / "results.json"))
  assert len(recs) == 2 * 3
  for r in recs:
    for k in ("dataset", "source", "target", "normal_class", "method", "seed", "auc"):
      assert k in r
    assert 0 <= r["auc"] <= 100
  assert {r["method"] for r in recs} == {"source_only", "cluster_psi", "oracle"}
  assert all(r["d_purity"] == 100.0 for r in recs if r["method"] in ("oracle", "cluster_psi"))
  assert all(r["n_target_anomalous"] > 0 for r in recs)
  md = open(work / "results.md").read()
  assert "| cluster_psi |" in md and "±" in md
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0 and len(json.load(open(work / "results.json"))) == 6
  assert "another config.json" not in out.stderr
  # A changed setting in the same workdir: the records are reused by identity, and the user is
  # told which setting differs (it does not apply to them).
  out = subprocess.run(cmd + ["--config.uda.cluster=kmeans"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
  assert out.returncode == 0 and "nothing recomputed" in out.stdout
  assert "uda.cluster: 'trimmed' -> 'kmeans'" in out.stderr and "fresh --workdir" in out.stderr
  bad = subprocess.run(cmd[:5] + [f"--config.data.root={tmp_path / 'data'}", "--config.data.source=src",
                                  "--config.data.targets=nope", f"--workdir={work}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "unknown domain 'nope'; known: src, tgt" in bad.stderr


def test_psi_file_features_are_matched_by_path_and_bad_files_refused(tmp_path):
  root = tmp_path / "data"
  paths = np.array(["a/c0/1.png", "a/c0/2.png", str(root / "b/c1/3.png")])
  feats = np.arange(6, dtype=np.float32).reshape(3, 2)
  f = tmp_path / "psi.npz"
  np.savez(f, paths=paths, features=feats)
  psi = uda_train.load_psi_file(str(f), str(root))
  got = psi.take([str(root / "b/c1/3.png"), str(root / "a/c0/1.png")])
  np.testing.assert_array_equal(got, feats[[2, 0]])
  with pytest.raises(uda_train.ConfigError, match=r"no features for 1 of 2 images \(first: .*9.png\)"):
    psi.take([str(root / "a/c0/9.png"), str(root / "a/c0/2.png")])
  with pytest.raises(uda_train.ConfigError, match="no such file"):
    uda_train.load_psi_file(str(tmp_path / "nope.npz"), "")
  np.savez(f, paths=paths, feats=feats)
  with pytest.raises(uda_train.ConfigError, match="needs `paths` and `features`"):
    uda_train.load_psi_file(str(f), "")
  np.savez(f, paths=paths[:2], features=feats)
  with pytest.raises(uda_train.ConfigError, match="one row per path"):
    uda_train.load_psi_file(str(f), "")
  np.savez(f, paths=paths, features=np.where(feats > 4, np.nan, feats))
  with pytest.raises(uda_train.ConfigError, match="NaN"):
    uda_train.load_psi_file(str(f), "")


@pytest.mark.parametrize("alignment,class_batch", [("contrastive", 0)])   # mmd, class_batch 1:
                                                                           # the experiment test
def test_runs_trained_together_equal_one_by_one(lite, alignment, class_batch):
  """Classes x seeds of the one-vs-all protocol in one mapped step == `train_uda` per run."""
  module, variables = lite
  start = uda.stage_start(module, 7)
  rng = np.random.default_rng(3)
  from helpers import texture
  from rodajax.features import crop_and_normalise
  imgs = np.stack([np.clip(texture(rng, 64).astype(int) + rng.integers(-60, 60, 3), 0, 255)
                   for _ in range(48)]).astype(np.uint8)
  trunk = functools.partial(jax.jit(uda.trunk_features(module, start)), variables)
  h = np.asarray(trunk(crop_and_normalise(jnp.asarray(imgs), 64)))
  s = uda.Settings(alignment=alignment, steps=5, batch=8, lr=1e-3)
  runs = []
  for r, (a, b, n_t) in enumerate([(0, 16, 12), (8, 28, 16), (20, 32, 10)]):  # different sizes
    model, v = uda.init_model(module, variables, start, 16, jax.random.key(10 + r), jnp.asarray(h))
    dom = np.arange(n_t) % 3 != 0
    runs.append((v, h[a:b], h[b:b + n_t], dom, jax.random.key(20 + r)))
  fns = uda_train.StepFunctions()
  template = uda.init_params(model, runs[0][0], jax.random.key(0))
  one = [loops.train_uda(model, fns.step(model, s, template), v, hs, ht, d, s, k)
         for v, hs, ht, d, k in runs]
  vs, hss, hts, doms, keys = (list(x) for x in zip(*runs))
  together = loops.train_uda_runs(model, loops.uda_run_step(model, s, template, class_batch),
                                  vs, hss, hts, doms, s, keys, fns.embed(model))
  for (v1, mu1, i1), (v2, mu2, i2), run in zip(one, together, runs):
    np.testing.assert_allclose(mu1, mu2, rtol=1e-5, atol=1e-5)
    for k in ("loss_first", "loss_last", "l_ad_first", "l_ad_last", "var_ratio"):
      np.testing.assert_allclose(i1[k], i2[k], rtol=1e-3, err_msg=k)
    s1 = np.sum((loops.embed(fns.embed(model), v1, run[2], 16) - mu1) ** 2, 1)
    s2 = np.sum((loops.embed(fns.embed(model), v2, run[2], 16) - mu2) ** 2, 1)
    np.testing.assert_allclose(s1, s2, rtol=1e-3, atol=1e-5)
    assert i1["loss_last"] != i1["loss_first"]      # it trained: the comparison is not vacuous
  with pytest.raises(ValueError, match="each needs uda.batch=8"):
    loops.train_uda_runs(model, loops.uda_run_step(model, s, template),
                         [runs[0][0]] * 2, [h[:4], h[:16]], [h[:12]] * 2, [runs[0][3]] * 2,
                         s, [jax.random.key(0)] * 2, fns.embed(model))


def test_resnet_f_runs_the_experiment(tmp_path, monkeypatch):
  """f = ResNet-18 (the user's torchvision weights; seeded here), its layer4 trained."""
  from configs import pacs
  _write_domains(tmp_path / "data")
  rel = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "data")
               for d, _, fs in os.walk(tmp_path / "data") for f in fs)
  cols = [np.asarray(Image.open(tmp_path / "data" / p), np.float32).mean((0, 1)) for p in rel]
  np.savez(tmp_path / "psi.npz", paths=np.array(rel), features=np.stack(cols))
  create = backbones.create
  monkeypatch.setattr(uda_train.backbones, "create",
                      lambda name, weights=None, **kw: create(name, None, seed=5, **kw))
  c = pacs.get_config()
  c.data.root, c.data.source, c.data.targets = str(tmp_path / "data"), "src", ("tgt",)
  c.data.classes, c.data.resize, c.seeds = ("k0",), 32, 1
  c.model.backbone, c.model.tail_stage = "resnet18", 4
  c.uda.steps, c.uda.batch, c.uda.methods = 3, 8, ("source_only", "cluster_psi")
  c.data.min_images, c.data.contamination = 4, 0.2
  c.uda.psi = f"file:{tmp_path / 'psi.npz'}"
  recs = uda_train.train_and_evaluate(c, str(tmp_path / "w"))
  assert [r["method"] for r in recs] == ["source_only", "cluster_psi"]
  assert all(0 <= r["auc"] <= 100 and r["var_ratio"] > 0 for r in recs)
  assert recs[1]["d_purity"] == 100.0
  trunk = [f for f in os.listdir(tmp_path / "w" / "cache") if "_trunk_" in f]
  assert len(trunk) == 2    # one per domain, layer3's output
  with np.load(tmp_path / "w" / "cache" / trunk[0]) as z:
    assert z["x"].shape[1:] == (2, 2, 256)
  c.model.tail_stage = 5
  with pytest.raises(uda_train.ConfigError, match=r"tail_stage=5: ResNet stage 5 does not exist"):
    uda_train.train_and_evaluate(c, str(tmp_path / "w2"))


def test_uda_runs_vmapped_give_the_loops_records(tmp_path):
  """config.uda.vmap_runs: (class, seed) runs of a (target, method) trained together."""
  from configs import pacs
  _write_domains(tmp_path / "data")
  recs = {}
  for vm in (False, True):
    c = pacs.get_config()
    c.data.root, c.data.source, c.data.targets = str(tmp_path / "data"), "src", ("tgt",)
    c.data.classes, c.data.resize, c.seeds = ("k0", "k1"), 64, 2
    c.uda.steps, c.uda.batch, c.uda.methods = 4, 8, ("source_only", "cluster_psi")
    c.data.min_images, c.data.contamination, c.uda.vmap_runs = 4, 0.2, vm
    # One feature cache: the vmapped pass reads the frozen trunk's and psi's features the loop
    # wrote, so the two passes train on the same inputs and differ only in how they train.
    c.cache_dir = str(tmp_path / "cache")
    out = uda_train.train_and_evaluate(c, str(tmp_path / f"w{vm}"))
    recs[vm] = {(r["normal_class"], r["seed"], r["method"]): r for r in out}
  assert set(recs[False]) == set(recs[True]) and len(recs[True]) == 2 * 2 * 2
  for k, a in recs[False].items():
    b = recs[True][k]
    assert abs(a["auc"] - b["auc"]) <= 0.5, (k, a["auc"], b["auc"])
    np.testing.assert_allclose(a["loss_last"], b["loss_last"], rtol=1e-3)
    assert a["d_size"] == b["d_size"] and b["vmap_runs"] == 4


def test_uda_tables_paired_difference_hand_computed(tmp_path):
  """`uda_tables --paired`: split-by-split differences against a reference workdir."""
  from experiments import uda_tables

  def rec(cls, seed, auc, method="cluster_psi"):
    return {"method": method, "target": "cartoon", "normal_class": cls, "seed": seed, "auc": auc}

  ref = [rec("dog", 0, 70.0), rec("dog", 1, 80.0), rec("house", 0, 60.0), rec("dog", 0, 50.0, "oracle")]
  new = [rec("dog", 0, 72.0), rec("dog", 1, 79.0), rec("house", 0, 66.0),
         rec("house", 1, 99.0),                       # no reference split: left out
         rec("dog", 0, 90.0, "oracle"), rec("dog", 0, 10.0, "source_only")]  # no reference method
  for name, recs in (("ref", ref), ("new", new)):
    os.makedirs(tmp_path / name)
    json.dump(recs, open(tmp_path / name / "results.json", "w"))
  recs = uda_tables.rows([f"R={tmp_path / 'ref'}", f"N={tmp_path / 'new'}"])
  lines = uda_tables.paired(recs, "R").splitlines()
  # cluster_psi: d = (2, -1, 6); mean 7/3; std (ddof 1) sqrt(37/3); s.e. std / sqrt(3)
  se = math.sqrt(37 / 3) / math.sqrt(3)
  assert lines[2] == f"| N: cluster_psi | 3 | +2.33 ± {1.96 * se:.2f} | 2 of 3 |"
  assert lines[3] == "| N: oracle | 1 | +40.00 ± nan | 1 of 1 |"
  assert len(lines) == 4                              # source_only has nothing to pair with
  with pytest.raises(SystemExit, match="names no workdir label"):
    uda_tables.paired(recs, "X")
