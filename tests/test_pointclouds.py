"""3D: PointNet parity, real-format loaders, point geometry, shifts, views, the experiment contract."""
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES, shared_path
from golden_weights import pointnet_state_dict
from rodajax import augment, corruptions3d, metrics, points
from rodajax.backbones import CheckpointError, load_state_dict, pointnet
from rodajax.data import DataError
from rodajax.data import pointclouds as pc

PC = os.path.join(FIXTURES, "pointclouds")


# --- PointNet -----------------------------------------------------------------

@pytest.fixture(scope="module")
def golden():
  return np.load(os.path.join(FIXTURES, "pointnet.npz"))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_pointnet_matches_pytorch_reference_with_seeded_weights(golden, mode):
  v = pointnet.from_torch(pointnet_state_dict(0))
  x = golden["random_points"]
  if mode == "eval":
    out = pointnet.PointNet().apply(v, x)
  else:
    out, _ = pointnet.PointNet().apply(v, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(out["global"], golden[f"random_{mode}_global"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["layer2"], golden[f"random_{mode}_layer2"], rtol=1e-4, atol=1e-5)
  for i in range(1, 6):
    np.testing.assert_allclose(out[f"layer{i}"].mean(1), golden[f"random_{mode}_layer{i}_mean"],
                               rtol=1e-4, atol=1e-5)


def test_pointnet_matches_pytorch_on_the_shared_modelnet40_weights(golden):
  path = shared_path("pointclouds", "weights", "best_model.t7")
  if "shared_global" not in golden:
    pytest.skip("fixture made without ../shared (no shared_* arrays)")
  v = pointnet.from_torch(load_state_dict(path), source=path)
  out = pointnet.PointNet().apply(v, golden["shared_points"])
  np.testing.assert_allclose(out["global"], golden["shared_global"], rtol=1e-4, atol=1e-4)
  # The encoder-only file holds the same tensors without the prefix.
  bare = pointnet.from_torch(load_state_dict(os.path.join(os.path.dirname(path),
                                                          "best_ptnet_model.t7")))
  jax.tree.map(np.testing.assert_array_equal, bare, v)


def test_pointnet_taps_stop_early_and_equal_the_full_pass(golden):
  v = pointnet.from_torch(pointnet_state_dict(0))
  x = golden["random_points"]
  part = pointnet.PointNet(taps=("layer2", "layer3")).apply(v, x)
  assert set(part) == {"layer1", "layer2", "layer3"}
  np.testing.assert_allclose(part["layer3"], pointnet.PointNet().apply(v, x)["layer3"], atol=1e-6)


def test_pointnet_conversion_refuses_a_wrong_checkpoint():
  sd = pointnet_state_dict(0)
  with pytest.raises(CheckpointError, match="no PointNet encoder"):
    pointnet.from_torch({"fc.weight": np.zeros((2, 2))}, source="x.pth")
  bad = dict(sd)
  bad["conv3.weight"] = np.zeros((64, 32, 1), np.float32)
  with pytest.raises(CheckpointError, match=r"'conv3.weight' has shape \(64, 32, 1\)"):
    pointnet.from_torch(bad)
  del bad["bn2.running_var"]
  with pytest.raises(CheckpointError, match="missing key 'bn2.running_var'"):
    pointnet.from_torch(bad)


# --- formats ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ascii", "binary", "binary_compressed"])
def test_pcd_reader_reads_every_data_kind_and_drops_nan_points(name):
  expected = np.load(os.path.join(PC, "pcd_xyz.npy"))
  xyz = pc.read_pcd(os.path.join(PC, f"{name}.pcd"))
  np.testing.assert_array_equal(xyz, expected[:6])   # the 7th point is NaN


def test_pcd_reader_refuses_malformed_files(tmp_path):
  with pytest.raises(DataError, match="truncated.pcd.*truncated"):
    pc.read_pcd(os.path.join(PC, "truncated.pcd"))
  with pytest.raises(DataError, match="no x y z"):
    pc.read_pcd(os.path.join(PC, "no_xyz.pcd"))
  (tmp_path / "junk.pcd").write_bytes(b"hello\x00world")
  with pytest.raises(DataError, match="no DATA line"):
    pc.read_pcd(str(tmp_path / "junk.pcd"))
  with pytest.raises(DataError, match="point cloud .*missing.pcd.* does not exist"):
    pc.read_pcd(str(tmp_path / "missing.pcd"))


def test_lzf_decompression_hand_cases():
  assert pc.lzf_decompress(bytes([2]) + b"abc" + bytes([1 << 5, 2]), 6) == b"abcabc"
  # An overlapping back-reference repeats the last two bytes twice.
  assert pc.lzf_decompress(bytes([1]) + b"ab" + bytes([2 << 5, 1]), 6) == b"ababab"
  with pytest.raises(ValueError, match="header says 7"):
    pc.lzf_decompress(bytes([2]) + b"abc", 7)


def test_write_pcd_round_trip(tmp_path):
  xyz = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
  for kind in ("ascii", "binary"):
    pc.write_pcd(str(tmp_path / f"{kind}.pcd"), xyz, kind)
    np.testing.assert_allclose(pc.read_pcd(str(tmp_path / f"{kind}.pcd")), xyz, rtol=1e-6)


def test_builtin_tiff_reader_reads_mvtec3d_xyz_written_by_tifffile(monkeypatch):
  import builtins
  real_import = builtins.__import__

  def no_tifffile(name, *a, **k):   # force the built-in reader even where tifffile exists
    if name == "tifffile":
      raise ImportError(name)
    return real_import(name, *a, **k)
  monkeypatch.setattr(builtins, "__import__", no_tifffile)
  xyz = pc.read_tiff(os.path.join(PC, "mvtec3d", "part", "train", "good", "xyz", "000.tiff"))
  assert xyz.shape == (40, 40, 3) and xyz.dtype == np.float32
  yy, xx = np.mgrid[0:40, 0:40]
  np.testing.assert_allclose(xyz[1:, :, 0], (xx * 0.001)[1:], atol=1e-4)
  plane = 0.3 + 0.001 * xx + 0.0005 * yy
  obj = (np.abs(yy - 20) < 10) & (np.abs(xx - 20) < 10)
  np.testing.assert_allclose(xyz[..., 2][obj], (plane - 0.02)[obj], atol=1e-4)
  assert np.all(xyz[0, 0] == 0)


def test_tiff_reader_refuses_non_tiff(tmp_path):
  (tmp_path / "x.tiff").write_bytes(b"PK\x03\x04 not a tiff at all")
  with pytest.raises(DataError, match="x.tiff"):
    pc.read_tiff(str(tmp_path / "x.tiff"))


def test_mvtec3d_loader_removes_the_background_plane_and_labels_points():
  ds = pc.load_mvtec3d_points(os.path.join(PC, "mvtec3d"), "part", n_points=128)
  assert ds.train.images.shape == (2, 128, 3) and ds.test.images.shape == (2, 128, 3)
  assert list(ds.test.labels) == [1, 0] and ds.test.types == ["crack", "good"]
  norms = np.linalg.norm(ds.test.images, axis=-1)
  np.testing.assert_allclose(norms.max(axis=1), 1.0, rtol=1e-5)
  # Only the object (19 x 19 pixels) survives: the crack's 5 x 5 pixels are ~7% of it.
  share = ds.test.masks[0].mean()
  assert 0.02 < share < 0.15, share
  assert not ds.test.masks[1].any()
  xyz = pc.read_tiff(os.path.join(PC, "mvtec3d", "part", "test", "good", "xyz", "000.tiff"))
  cloud, _ = pc.organised_to_cloud(xyz, None, 0.005)
  assert len(cloud) == 19 * 19


def test_mesh_readers_agree_on_a_cube(tmp_path):
  v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float64)
  quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
  tris = [(q[0], q[i], q[i + 1]) for q in quads for i in (1, 2)]
  with open(tmp_path / "b.stl", "wb") as f:
    f.write(b"\0" * 80 + struct.pack("<I", len(tris)))
    for t in tris:
      f.write(struct.pack("<3f", 0, 0, 0) + v[list(t)].astype("<f4").tobytes() + b"\0\0")
  with open(tmp_path / "a.stl", "w") as f:
    f.write("solid cube\n" + "".join(
        "facet normal 0 0 0\nouter loop\n" + "".join(f"vertex {a} {b} {c}\n" for a, b, c in v[list(t)])
        + "endloop\nendfacet\n" for t in tris) + "endsolid cube\n")
  head = (f"ply\nformat {{}} 1.0\nelement vertex 8\nproperty float x\nproperty float y\n"
          f"property float z\nelement face 6\nproperty list uchar int vertex_indices\nend_header\n")
  with open(tmp_path / "a.ply", "w") as f:
    f.write(head.format("ascii") + "".join(f"{a} {b} {c}\n" for a, b, c in v)
            + "".join("4 " + " ".join(map(str, q)) + "\n" for q in quads))
  with open(tmp_path / "b.ply", "wb") as f:
    f.write(head.format("binary_little_endian").encode() + v.astype("<f4").tobytes()
            + b"".join(struct.pack("<B4i", 4, *q) for q in quads))
  for name in ("a.stl", "b.stl", "a.ply", "b.ply"):
    verts, faces = pc.read_mesh(str(tmp_path / name))
    assert len(verts) == 8 and faces.shape == (12, 3), name
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    assert area.sum() == pytest.approx(6.0), name
  pts, nrm = pc.sample_surface(verts, faces, 2000, np.random.default_rng(0))
  # Every sampled point lies on a face of the cube.
  assert np.all(np.min(np.minimum(np.abs(pts), np.abs(pts - 1)), axis=1) < 1e-9)
  np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0)
  with pytest.raises(DataError, match="unknown mesh format"):
    (tmp_path / "m.obj").write_text("v 0 0 0\n")
    pc.read_mesh(str(tmp_path / "m.obj"))


def _real3d(tmp_path, with_gt=True):
  rng = np.random.default_rng(0)
  cat = tmp_path / "toy"
  for sub in ("train", "test", "gt"):
    (cat / sub).mkdir(parents=True)
  sphere = lambda n: (lambda p: p / np.linalg.norm(p, axis=1, keepdims=True))(rng.normal(size=(n, 3)))
  for i in range(3):
    pc.write_pcd(str(cat / "train" / f"toy_{i}.pcd"), sphere(300))
  pc.write_pcd(str(cat / "test" / "good_0.pcd"), sphere(300), "ascii")
  bad = sphere(300)
  lab = bad[:, 2] > 0.8
  bad[lab] *= 1.2
  pc.write_pcd(str(cat / "test" / "bulge_1.pcd"), bad)
  if with_gt:
    perm = rng.permutation(300)   # ground truth in another order: matched by position
    np.savetxt(cat / "gt" / "bulge_1.txt", np.c_[bad[perm], lab[perm]], fmt="%.7g %.7g %.7g %d")
  return tmp_path, lab


def test_real3d_loader_reads_the_layout_and_matches_labels_by_position(tmp_path):
  root, lab = _real3d(tmp_path)
  assert pc.categories(str(root)) == ["toy"]
  ds = pc.load_real3d(str(root), "toy", n_points=300)
  assert ds.train.images.shape == (3, 300, 3)
  assert list(ds.test.labels) == [1, 0] and ds.test.types == ["bulge", "good"]
  assert ds.test.masks[0].sum() == lab.sum() and not ds.test.masks[1].any()
  # The labelled points are the displaced ones (largest radius before normalisation).
  ds_small = pc.load_real3d(str(root), "toy", n_points=100)
  assert ds_small.test.images.shape == (2, 100, 3) and ds_small.test.has_mask.all()
  with pytest.raises(DataError, match="class folder .*nope.* classes under .*: toy"):
    pc.load_real3d(str(root), "nope")


def test_real3d_loader_without_ground_truth_and_with_a_wrong_one(tmp_path):
  root, _ = _real3d(tmp_path, with_gt=False)
  ds = pc.load_real3d(str(root), "toy", n_points=300)
  assert list(ds.test.has_mask) == [False, True]
  np.savetxt(root / "toy" / "gt" / "bulge_1.txt", np.c_[np.random.rand(300, 3) + 5, np.ones(300)])
  with pytest.raises(DataError, match="do not match the test cloud"):
    pc.load_real3d(str(root), "toy", n_points=300)
  with pytest.raises(DataError, match="not a folder"):
    pc.categories(str(root / "missing"))


def test_synthesised_defects_label_what_they_change():
  rng = np.random.default_rng(0)
  xyz = np.c_[rng.uniform(-1, 1, (2000, 2)), np.zeros(2000)]       # a flat plate, normal +z
  nrm = np.tile([0.0, 0.0, 1.0], (2000, 1))
  for kind in ("bulge", "dent", "crack"):
    out, lab = pc.synthesise_defect(xyz, nrm, kind, np.random.default_rng(1), 0.04, 0.05)
    moved = np.abs(out[:, 2]) > 1e-9
    assert lab.any() and np.all(moved[lab] | (kind != "crack"))
    assert not moved[~lab].any() or kind in ("bulge", "dent")   # falloff tails below 10% unlabeled
    sign = np.sign(out[moved, 2])
    assert np.all(sign == {"bulge": 1, "dent": -1, "crack": -1}[kind])
  out, lab = pc.synthesise_defect(xyz, nrm, "hole", np.random.default_rng(1), 0.04)
  assert len(out) == 2000 - int(0.04 * 2000) and lab.any()


# --- geometry, features, scores -----------------------------------------------

def test_farthest_point_sampling_hand_case():
  p = jnp.array([[0.0, 0, 0], [1, 0, 0], [10, 0, 0], [11, 0, 0], [5, 0, 0]])
  # from 0: farthest is 11 (index 3); then 5 (distance 5 to both); then 1 or 10 (tie, first).
  assert list(points.farthest_point_sampling(p, 4)) == [0, 3, 4, 1]
  with pytest.raises(ValueError, match="cannot sample 6 centres from 5"):
    points.farthest_point_sampling(p, 6)


def test_groups_are_centred_nearest_neighbours_and_propagation_interpolates():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 64, 3)), jnp.float32)
  c, g = points.knn_groups(x, 8, 5, group_scale=2.0)
  assert c.shape == (2, 8, 3) and g.shape == (2, 8, 5, 3)
  np.testing.assert_allclose(g[:, :, 0], 0.0, atol=1e-6)      # the centre is its own nearest
  d = np.linalg.norm(np.asarray(x[0]) - np.asarray(c[0, 0]), axis=-1)
  np.testing.assert_allclose(np.sort(np.linalg.norm(g[0, 0], axis=-1)) / 2.0, np.sort(d)[:5],
                             rtol=1e-5, atol=1e-6)
  s = jnp.arange(8.0)
  at_centres = points.propagate(c[0], s, c[0])
  np.testing.assert_allclose(at_centres, s, atol=1e-3)
  mid = points.propagate(jnp.array([[0.0, 0, 0], [2.0, 0, 0], [50.0, 0, 0]]),
                         jnp.array([1.0, 3.0, 100.0]), jnp.array([[1.0, 0, 0]]))
  assert float(mid[0]) == pytest.approx((1 + 3 + 100 / 49 ** 2) / (2 + 1 / 49 ** 2), rel=1e-5)
  n = points.normalise(x)
  np.testing.assert_allclose(np.linalg.norm(n, axis=-1).max(axis=1), 1.0, rtol=1e-6)


def test_extractor_and_predict_shapes_and_an_exact_match_scores_zero(golden):
  v = pointnet.from_torch(pointnet_state_dict(0))
  module = pointnet.PointNet(taps=("layer2", "layer3"))
  ext = points.make_extractor(module, ("layer2", "layer3"), 16, 8, 4.0)
  x = jnp.asarray(golden["random_points"])
  z = ext(v, x)
  assert z.shape == (2, 16, 128)
  pred = points.make_predict(ext, 16)
  scores, per_point = pred(v, z[0], x)      # cloud 0's own patches are the bank
  assert per_point.shape == (2, 256)
  assert float(scores[0]) < 1e-2 < float(scores[1])
  np.testing.assert_allclose(per_point[0], 0.0, atol=1e-2)


def test_point_regions_split_separate_defects():
  g = np.stack(np.meshgrid(np.linspace(0, 1, 20), np.linspace(0, 1, 20)), -1).reshape(-1, 2)
  xyz = np.c_[g, np.zeros(400)][None]                 # a plate sampled on a grid
  mask = np.zeros((1, 400), bool)
  mask[0] = (np.linalg.norm(g - 0.2, axis=1) < 0.15) | (np.linalg.norm(g - 0.8, axis=1) < 0.15)
  reg = metrics.point_regions(xyz, mask)
  assert len(np.unique(reg[0][mask[0]])) == 2 and not reg[0][~mask[0]].any()
  # AUPRO with these regions: a perfect score map gives 100.
  assert metrics.aupro(mask, mask.astype(float), regions=reg) == pytest.approx(100.0)


# --- shifts and views -----------------------------------------------------------

def test_point_shifts_have_their_defining_properties():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 500, 3)), jnp.float32)
  key = jax.random.key(0)
  noisy = corruptions3d.corrupt(x, "gaussian_noise", 5, key)
  assert float(jnp.std(noisy - x)) == pytest.approx(corruptions3d.SIGMAS[4], rel=0.05)
  for name in ("dropout", "density"):
    y = np.asarray(corruptions3d.corrupt(x, name, 3, key))
    for b in range(3):   # every output point is an input point; some inputs are gone
      d = np.linalg.norm(y[b][:, None] - np.asarray(x[b])[None], axis=-1).min(axis=1)
      assert d.max() < 1e-6
      assert len(np.unique(y[b], axis=0)) < 500
  r = corruptions3d.corrupt(x, "rotation", 5, key)
  pd = lambda a: np.linalg.norm(a[:, :, None] - a[:, None], axis=-1)
  np.testing.assert_allclose(pd(np.asarray(r)), pd(np.asarray(x)), atol=1e-4)
  assert not np.allclose(r, x, atol=1e-3)
  np.testing.assert_array_equal(corruptions3d.corrupt(x, "dropout", 2, key),
                                corruptions3d.corrupt(x, "dropout", 2, key))
  with pytest.raises(ValueError, match="unknown point-cloud shift 'fog'"):
    corruptions3d.corrupt(x, "fog", 1, key)


def test_point_views_are_permuted_rotations_about_the_up_axis():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 100, 3)), jnp.float32)
  v = augment.point_views(x, jax.random.key(1), 3)
  assert v.shape == (6, 100, 3)
  np.testing.assert_array_equal(v[:2], x)
  for i in (2, 3, 4, 5):
    b = i % 2
    np.testing.assert_allclose(np.sort(v[i, :, 1]), np.sort(x[b, :, 1]), atol=1e-6)   # y kept
    np.testing.assert_allclose(np.sort(np.linalg.norm(v[i], axis=-1)),
                               np.sort(np.linalg.norm(x[b], axis=-1)), atol=1e-5)
  np.testing.assert_array_equal(augment.point_views(x, jax.random.key(1), 2, "copy")[2:], x)


# --- the experiment contract ------------------------------------------------------

def _tiny_dev_set(tmp_path):
  """A binary-STL cube, built into a Real3D-layout dev set by the builder command."""
  from experiments import make_pointclouds
  v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float64)
  quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
  tris = [(q[0], q[i], q[i + 1]) for q in quads for i in (1, 2)]
  mesh = tmp_path / "cube.stl"
  with open(mesh, "wb") as f:
    f.write(b"\0" * 80 + struct.pack("<I", len(tris)))
    for t in tris:
      f.write(struct.pack("<3f", 0, 0, 0) + v[list(t)].astype("<f4").tobytes() + b"\0\0")
  root = tmp_path / "dev"
  make_pointclouds.main(["--meshes", str(mesh), "--out", str(root), "--train", "6", "--good",
                         "5", "--defective", "5", "--points", "600", "--depth", "0.1"])
  return root


def test_pointcloud_experiment_writes_the_2d_records_and_resumes(tmp_path, capsys):
  from experiments import roda
  root = _tiny_dev_set(tmp_path)
  assert sorted(os.listdir(root / "cube" / "test"))[:2] == ["bulge_000.pcd", "bulge_004.pcd"]
  work = tmp_path / "run"
  args = ["--config", "configs/pointcloud.py", f"--config.data.root={root}",
          "--config.data.points=256", "--config.data.groups=32", "--config.data.group_size=16",
          "--config.model.weights=", "--config.adapt.batch_images=2", "--workdir", str(work)]
  roda.main(args)
  recs = json.load(open(work / "results.json"))
  recs = recs["records"] if isinstance(recs, dict) else recs
  got = {(r["category"], r["shift"], r["method"]) for r in recs}
  assert got == {("cube", s, m) for s in ("clean", "gaussian_noise") for m in ("none", "roda")}
  for r in recs:
    assert 0 <= r["image_auroc"] <= 100 and 0 <= r["pixel_auroc"] <= 100
    assert r["n_test"] == 8 and r["n_adapt"] == 2
  assert os.path.isfile(work / "figures" / "real3d_cube_clouds.png")
  capsys.readouterr()
  roda.main(args)
  assert "nothing recomputed" in capsys.readouterr().out


def test_builder_from_clean_clouds_writes_the_real3d_layout(tmp_path):
  from experiments import make_pointclouds
  rng = np.random.default_rng(0)
  sphere = rng.normal(size=(2, 400, 3))
  sphere /= np.linalg.norm(sphere, axis=-1, keepdims=True)
  np.savez(tmp_path / "ball.npz", points=sphere.astype(np.float16))
  make_pointclouds.main(["--clouds", str(tmp_path / "ball.npz"), "--out", str(tmp_path / "dev"),
                         "--train", "3", "--good", "2", "--defective", "4", "--seed", "1"])
  ds = pc.load_real3d(str(tmp_path / "dev"), "ball", n_points=256)
  assert len(ds.train) == 3 and ds.test.types == ["bulge", "crack", "dent", "good", "good", "hole"]
  assert list(ds.test.labels) == [1, 1, 1, 0, 0, 1]
  assert list(ds.test.masks.any(axis=1)) == [True, True, True, False, False, True]
  with pytest.raises(SystemExit) as e:     # a user error: one line, exit 2
    from experiments import cli
    cli.run(make_pointclouds.main, ["--out", str(tmp_path / "x")])
  assert e.value.code == 2


def test_the_image_tool_refuses_a_point_cloud_config_by_name(tmp_path):
  from experiments import cli, fit
  config = cli.load_config("configs/pointcloud.py")
  with pytest.raises(cli.UserError, match="point clouds .*experiments.roda"):
    fit.validate_fit(config)


def test_config_mistakes_in_3d_are_named():
  from experiments import cli, train
  c = cli.load_config("configs/pointcloud.py")
  c.model.backbone = "efficientnet_lite0"
  with pytest.raises(train.ConfigError, match="need a point encoder: pointnet"):
    train.validate(c)
  c = cli.load_config("configs/pointcloud.py")
  c.shift.corruptions = ("clean", "defocus_blur")
  with pytest.raises(train.ConfigError, match="unknown point-cloud shift 'defocus_blur'"):
    train.validate(c)
  c = cli.load_config("configs/pointcloud.py")
  c.data.group_size = 10000
  with pytest.raises(train.ConfigError, match="must not exceed config.data.points"):
    train.validate(c)
  c = cli.load_config("configs/elpv.py")
  c.model.backbone = "pointnet"
  with pytest.raises(train.ConfigError, match="configs/pointcloud.py"):
    train.validate(c)


def test_labels_follow_their_points_through_dropout_and_density():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 300, 3)), jnp.float32)
  for name in ("dropout", "density", "gaussian_noise", "rotation"):
    y, src = corruptions3d.corrupt_indexed(x, name, 4, jax.random.key(3))
    if name in ("dropout", "density"):
      np.testing.assert_array_equal(y, np.take_along_axis(np.asarray(x), np.asarray(src)[..., None], 1))
    else:
      np.testing.assert_array_equal(src, np.broadcast_to(np.arange(300), (2, 300)))


def test_train_statistics_are_the_moments_of_the_training_patches(golden):
  # model.bn_stats=train: layer 1's statistics are those of x W1 + b1 over every point of every
  # training patch the encoder sees (hand-computed in numpy); layer 2's follow from layer 1's.
  from configs import pointcloud
  from experiments import train
  c = pointcloud.get_config()
  c.data.groups, c.data.group_size, c.data.group_scale = 16, 8, 4.0
  c.model.taps = ("layer2", "layer3")
  v = pointnet.from_torch(pointnet_state_dict(0))
  module = pointnet.PointNet(taps=("layer2", "layer3"))
  clouds = np.asarray(golden["random_points"], np.float32)          # [2, 256, 3]
  got = train.train_statistics(c, module, v, clouds)["batch_stats"]
  x = np.asarray(points.encoder_input(jnp.asarray(clouds), 16, 8, 4.0)).reshape(-1, 3)
  h = x @ np.asarray(v["params"]["conv1"]["kernel"]) + np.asarray(v["params"]["conv1"]["bias"])
  np.testing.assert_allclose(got["bn1"]["mean"], h.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got["bn1"]["var"], h.var(0), rtol=1e-3, atol=1e-5)
  p = v["params"]["bn1"]
  a = np.maximum((h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5) * np.asarray(p["scale"])
                 + np.asarray(p["bias"]), 0)
  h2 = a @ np.asarray(v["params"]["conv2"]["kernel"]) + np.asarray(v["params"]["conv2"]["bias"])
  np.testing.assert_allclose(got["bn2"]["mean"], h2.mean(0), rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(got["bn2"]["var"], h2.var(0), rtol=1e-3, atol=1e-4)
  # the checkpoint's own statistics are something else (ModelNet40's), and stay in `v`
  assert not np.allclose(v["batch_stats"]["bn1"]["var"], got["bn1"]["var"], rtol=0.1)
