"""Point clouds: the file formats users bring, their dataset layouts, and meshes.

Formats
  PCD (Point Cloud Library) v0.5-0.7: DATA ascii, binary and binary_compressed
      (LZF); fields x y z are read, others skipped.
  TIFF: MVTec 3D-AD's organised clouds, `[H, W, 3]` float32 per pixel (x, y, z;
      (0, 0, 0) = no measurement). Read with `tifffile` when it is installed,
      else by the built-in reader of uncompressed strip/tile TIFFs (what MVTec
      3D-AD ships).
  STL (binary, ascii) and PLY (ascii, binary little/big endian) meshes, to
      sample clouds from (`experiments.make_pointclouds`).

Layouts (`load_real3d`, `load_mvtec3d_points`)
  Real3D-AD / Anomaly-ShapeNet:
      <root>/<class>/train/*.pcd                 normal training clouds
      <root>/<class>/test/*.pcd                  normal test clouds have "good" in the name
      <root>/<class>/gt/<test stem>.txt          one "x y z label" line per point
  MVTec 3D-AD:
      <root>/<class>/{train,validation,test}/<type>/xyz/*.tiff
      <root>/<class>/test/<type>/gt/*.png        per-pixel defect masks
    The background (the plane the object lies on) is removed as users expect
    (BTF / M3DM preprocessing): a plane is fitted robustly to the valid points
    of a border strip and points within `plane_distance` of it are dropped.

Every cloud is subsampled (seeded by its file name) to `n_points` points and
centred and scaled into the unit sphere; labels follow their points.
Clouds come back in an `ImageSet` whose `images` are float32 `[N, P, 3]` and
whose `masks` are per-point bool labels `[N, P]`.
"""
from __future__ import annotations

import glob
import os
import re
import struct
import zlib
from typing import Sequence

import numpy as np

from rodajax.data.images import DataError, check_file
from rodajax.data.mvtec import Dataset, ImageSet

# ---------------------------------------------------------------------------- PCD

_PCD_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4",
              ("I", 8): "<i8", ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4", ("U", 8): "<u8"}


def lzf_decompress(data: bytes, size: int) -> bytes:
  """LZF (liblzf) decompression, as PCD's binary_compressed uses it."""
  out = bytearray()
  i, n = 0, len(data)
  while i < n:
    ctrl = data[i]
    i += 1
    if ctrl < 32:                      # literal run of ctrl + 1 bytes
      out += data[i:i + ctrl + 1]
      i += ctrl + 1
      continue
    length = ctrl >> 5
    if length == 7:
      length += data[i]
      i += 1
    ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
    i += 1
    if ref < 0:
      raise ValueError("LZF back-reference before the start of the data")
    for _ in range(length + 2):        # may overlap the bytes being written
      out.append(out[ref])
      ref += 1
  if len(out) != size:
    raise ValueError(f"LZF data decompressed to {len(out)} bytes, the header says {size}")
  return bytes(out)


def read_pcd(path: str) -> np.ndarray:
  """xyz `[N, 3]` float32 of a PCD file (ascii, binary or binary_compressed).

  Points with a non-finite coordinate (PCL's NaN for "no return") are dropped.
  """
  check_file(path, "point cloud")
  with open(path, "rb") as f:
    raw = f.read()
  header, pos = {}, 0
  while True:
    end = raw.find(b"\n", pos)
    if end < 0:
      raise DataError(f"{path}: PCD header has no DATA line (not a PCD file, or truncated)")
    line = raw[pos:end].decode("ascii", "replace").strip()
    pos = end + 1
    if not line or line.startswith("#"):
      continue
    key, _, value = line.partition(" ")
    header[key.upper()] = value.split()
    if key.upper() == "DATA":
      break
  try:
    fields = header["FIELDS"]
    sizes = [int(s) for s in header["SIZE"]]
    types = header["TYPE"]
    counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
    n = int(header["POINTS"][0]) if "POINTS" in header else (
        int(header["WIDTH"][0]) * int(header.get("HEIGHT", ["1"])[0]))
    kind = header["DATA"][0].lower()
  except (KeyError, ValueError, IndexError) as e:
    raise DataError(f"{path}: malformed PCD header ({e!r} missing or not a number); expected "
                    "FIELDS, SIZE, TYPE, COUNT, POINTS/WIDTH and DATA lines") from None
  if not (len(fields) == len(sizes) == len(types) == len(counts)):
    raise DataError(f"{path}: PCD header FIELDS/SIZE/TYPE/COUNT have different lengths")
  if not {"x", "y", "z"} <= set(fields):
    raise DataError(f"{path}: PCD has fields {fields}, no x y z")
  try:
    dtypes = [np.dtype(_PCD_TYPES[(t.upper(), s)]) for t, s in zip(types, sizes)]
  except KeyError:
    raise DataError(f"{path}: unsupported PCD TYPE/SIZE {list(zip(types, sizes))}") from None
  body = raw[pos:]
  cols = {}
  try:
    if kind == "ascii":
      text = body.decode("ascii", "replace").split()
      width = sum(counts)
      if len(text) < n * width:
        raise DataError(f"{path}: PCD ascii data has {len(text)} values, the header promises "
                        f"{n} points x {width} (truncated file?)")
      vals = np.asarray(text[:n * width], np.float64).reshape(n, width)
      off = 0
      for name, c in zip(fields, counts):
        cols[name] = vals[:, off]
        off += c
    elif kind == "binary":
      rec = np.dtype([(f"f{i}", dt, (c,)) for i, (dt, c) in enumerate(zip(dtypes, counts))])
      if len(body) < n * rec.itemsize:
        raise DataError(f"{path}: PCD binary data has {len(body)} bytes, the header promises "
                        f"{n} points x {rec.itemsize} bytes (truncated file?)")
      arr = np.frombuffer(body[:n * rec.itemsize], rec)
      cols = {name: arr[f"f{i}"][:, 0] for i, name in enumerate(fields)}
    elif kind == "binary_compressed":
      if len(body) < 8:
        raise DataError(f"{path}: PCD binary_compressed data is truncated")
      csize, usize = struct.unpack("<II", body[:8])
      plain = lzf_decompress(body[8:8 + csize], usize)
      off = 0
      for name, dt, c in zip(fields, dtypes, counts):   # column-major: one field after another
        k = n * c * dt.itemsize
        cols[name] = np.frombuffer(plain[off:off + k], dt).reshape(n, c)[:, 0]
        off += k
    else:
      raise DataError(f"{path}: unknown PCD DATA kind {kind!r}; known: ascii, binary, "
                      "binary_compressed")
  except ValueError as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"{path}: unreadable PCD data ({e})") from None
  xyz = np.stack([cols["x"], cols["y"], cols["z"]], axis=1).astype(np.float32)
  return xyz[np.all(np.isfinite(xyz), axis=1)]


def write_pcd(path: str, xyz: np.ndarray, data: str = "binary") -> None:
  """Writes xyz `[N, 3]` as a PCD v0.7 file (`data`: ascii or binary)."""
  xyz = np.asarray(xyz, np.float32)
  head = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\n"
          f"TYPE F F F\nCOUNT 1 1 1\nWIDTH {len(xyz)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
          f"POINTS {len(xyz)}\nDATA {data}\n")
  with open(path, "wb") as f:
    f.write(head.encode())
    if data == "ascii":
      np.savetxt(f, xyz, fmt="%.7g")
    elif data == "binary":
      f.write(xyz.astype("<f4").tobytes())
    else:
      raise ValueError(f"write_pcd writes ascii or binary, not {data!r}")


# ---------------------------------------------------------------------------- TIFF

_TIFF_DTYPES = {(1, 8): "u1", (1, 16): "u2", (1, 32): "u4", (2, 8): "i1", (2, 16): "i2",
                (2, 32): "i4", (3, 32): "f4", (3, 64): "f8"}


def _tiff_builtin(path: str, raw: bytes) -> np.ndarray:
  order = {b"II": "<", b"MM": ">"}.get(raw[:2])
  if order is None or struct.unpack(order + "H", raw[2:4])[0] != 42:
    raise DataError(f"{path}: not a TIFF file (bad header); MVTec 3D-AD xyz files are TIFF")
  (ifd,) = struct.unpack(order + "I", raw[4:8])
  (count,) = struct.unpack(order + "H", raw[ifd:ifd + 2])
  sizes = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8}
  codes = {1: "B", 2: "c", 3: "H", 4: "I", 6: "b", 7: "B", 8: "h", 9: "i", 11: "f", 12: "d",
           16: "Q"}
  tags = {}
  for e in range(count):
    off = ifd + 2 + 12 * e
    tag, typ, n = struct.unpack(order + "HHI", raw[off:off + 8])
    if typ not in codes:
      continue
    size = sizes[typ] * n
    where = off + 8 if size <= 4 else struct.unpack(order + "I", raw[off + 8:off + 12])[0]
    tags[tag] = struct.unpack(order + codes[typ] * n, raw[where:where + size])
  w, h = tags[256][0], tags[257][0]
  spp = tags.get(277, (1,))[0]
  bits = tags.get(258, (8,))[0]
  fmt = tags.get(339, (1,))[0]
  if tags.get(259, (1,))[0] != 1:
    raise DataError(f"{path}: compressed TIFF (compression {tags[259][0]}); the built-in reader "
                    "reads uncompressed files only: pip install tifffile")
  if tags.get(284, (1,))[0] != 1:
    raise DataError(f"{path}: planar TIFF layout; pip install tifffile to read it")
  dt = np.dtype(_TIFF_DTYPES.get((fmt, bits), "V")).newbyteorder(order)
  if dt.kind == "V":
    raise DataError(f"{path}: TIFF sample format {fmt} with {bits} bits is not supported")
  out = np.zeros((h, w, spp), dt)
  if 322 in tags:    # tiled
    tw, th = tags[322][0], tags[323][0]
    offs, lens = tags[324], tags[325]
    per_row = -(-w // tw)
    for t, (o, n) in enumerate(zip(offs, lens)):
      tile = np.frombuffer(raw[o:o + n], dt)[:th * tw * spp].reshape(th, tw, spp)
      r, c = (t // per_row) * th, (t % per_row) * tw
      out[r:r + th, c:c + tw] = tile[:min(th, h - r), :min(tw, w - c)]
  else:
    buf = b"".join(raw[o:o + n] for o, n in zip(tags[273], tags[279]))
    need = h * w * spp * dt.itemsize
    if len(buf) < need:
      raise DataError(f"{path}: TIFF holds {len(buf)} bytes of pixels, needs {need} (truncated?)")
    out = np.frombuffer(buf[:need], dt).reshape(h, w, spp)
  return out.astype(dt.newbyteorder("="))


def read_tiff(path: str) -> np.ndarray:
  """An MVTec 3D-AD organised cloud `[H, W, 3]` float32 (x, y, z per pixel)."""
  check_file(path, "point cloud")
  try:
    import tifffile
    try:
      arr = tifffile.imread(path)
    except Exception as e:
      raise DataError(f"{path}: unreadable TIFF ({e})") from None
  except ImportError:
    with open(path, "rb") as f:
      raw = f.read()
    try:
      arr = _tiff_builtin(path, raw)
    except (struct.error, KeyError, IndexError, ValueError) as e:
      if isinstance(e, DataError):
        raise
      raise DataError(f"{path}: unreadable or truncated TIFF ({type(e).__name__}: {e})") from None
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise DataError(f"{path}: TIFF of shape {arr.shape}; an organised point cloud is [H, W, 3] "
                    "(x, y, z per pixel), as MVTec 3D-AD's xyz/*.tiff")
  return arr.astype(np.float32)


# ---------------------------------------------------------------------------- meshes

def read_mesh(path: str) -> tuple[np.ndarray, np.ndarray]:
  """`(vertices [V, 3] float64, faces [F, 3] int64)` of an STL or PLY triangle mesh.

  PLY faces with more than 3 vertices are fanned into triangles.
  """
  check_file(path, "mesh")
  with open(path, "rb") as f:
    raw = f.read()
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext == ".stl":
      return _read_stl(raw)
    if ext == ".ply":
      return _read_ply(raw)
  except (ValueError, struct.error, IndexError, KeyError) as e:
    raise DataError(f"{path}: unreadable mesh ({type(e).__name__}: {e})") from None
  raise DataError(f"{path}: unknown mesh format {ext!r}; known: .stl, .ply")


def _read_stl(raw: bytes):
  if len(raw) >= 84:
    (n,) = struct.unpack("<I", raw[80:84])
    if 84 + 50 * n == len(raw):
      rec = np.frombuffer(raw[84:], np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)),
                                              ("a", "<u2")]))
      tri = rec["v"].astype(np.float64)
      return _index_triangles(tri)
  text = raw.decode("ascii", "replace")
  if "vertex" not in text:
    raise ValueError("neither a binary STL (size mismatch) nor an ascii STL (no vertex lines)")
  v = np.asarray(re.findall(r"vertex\s+(\S+)\s+(\S+)\s+(\S+)", text), np.float64)
  if len(v) % 3:
    raise ValueError(f"ascii STL has {len(v)} vertices, not a multiple of 3")
  return _index_triangles(v.reshape(-1, 3, 3))


def _index_triangles(tri):
  verts, inv = np.unique(tri.reshape(-1, 3), axis=0, return_inverse=True)
  return verts, inv.reshape(-1, 3).astype(np.int64)


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2",
              "int16": "i2", "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4",
              "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4", "double": "f8",
              "float64": "f8"}


def _read_ply(raw: bytes):
  end = raw.find(b"end_header")
  if not raw.startswith(b"ply") or end < 0:
    raise ValueError("not a PLY file (no 'ply' magic or no end_header)")
  lines = raw[:end].decode("ascii", "replace").splitlines()
  body = raw[raw.index(b"\n", end) + 1:]
  fmt, elements = None, []
  for line in lines:
    p = line.split()
    if not p:
      continue
    if p[0] == "format":
      fmt = p[1]
    elif p[0] == "element":
      elements.append((p[1], int(p[2]), []))
    elif p[0] == "property":
      elements[-1][2].append(p[1:])
  if fmt == "ascii":
    tokens = body.decode("ascii", "replace").split()
    pos = 0
    data = {}
    for name, count, props in elements:
      rows = []
      for _ in range(count):
        row = []
        for prop in props:
          if prop[0] == "list":
            k = int(tokens[pos])
            row.append([float(t) for t in tokens[pos + 1:pos + 1 + k]])
            pos += 1 + k
          else:
            row.append(float(tokens[pos]))
            pos += 1
        rows.append(row)
      data[name] = (props, rows)
    vprops, vrows = data["vertex"]
    names = [p[-1] for p in vprops]
    verts = np.asarray([[r[names.index(a)] for a in "xyz"] for r in vrows], np.float64)
    fprops, frows = data["face"]
    li = next(i for i, p in enumerate(fprops) if p[0] == "list")
    polys = [[int(x) for x in r[li]] for r in frows]
  elif fmt in ("binary_little_endian", "binary_big_endian"):
    bo = "<" if fmt == "binary_little_endian" else ">"
    pos, verts, polys = 0, None, []
    for name, count, props in elements:
      if not any(p[0] == "list" for p in props):
        dt = np.dtype([(p[1], bo + _PLY_TYPES[p[0]]) for p in props])
        arr = np.frombuffer(body[pos:pos + count * dt.itemsize], dt)
        pos += count * dt.itemsize
        if name == "vertex":
          verts = np.stack([arr[a].astype(np.float64) for a in "xyz"], axis=1)
        continue
      for _ in range(count):    # variable-length records: walk them
        poly = None
        for p in props:
          if p[0] == "list":
            ct, it = np.dtype(bo + _PLY_TYPES[p[1]]), np.dtype(bo + _PLY_TYPES[p[2]])
            k = int(np.frombuffer(body[pos:pos + ct.itemsize], ct)[0])
            pos += ct.itemsize
            vals = np.frombuffer(body[pos:pos + k * it.itemsize], it)
            pos += k * it.itemsize
            if poly is None:
              poly = vals.astype(np.int64).tolist()
          else:
            pos += np.dtype(_PLY_TYPES[p[0]]).itemsize
        if name == "face":
          polys.append(poly)
    if verts is None:
      raise ValueError("PLY has no vertex element")
  else:
    raise ValueError(f"unknown PLY format {fmt!r}")
  faces = [(p[0], p[i], p[i + 1]) for p in polys for i in range(1, len(p) - 1)]
  return verts, np.asarray(faces, np.int64).reshape(-1, 3)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """n points area-uniformly on the mesh surface and their face normals `([n, 3], [n, 3])`."""
  tri = vertices[faces]
  cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  area = np.linalg.norm(cross, axis=1)
  face = rng.choice(len(faces), size=n, p=area / area.sum())
  u, v = rng.random(n), rng.random(n)
  flip = u + v > 1
  u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
  t = tri[face]
  pts = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
  normals = cross[face] / np.maximum(area[face], 1e-30)[:, None]
  return pts, normals


# ---------------------------------------------------------------------------- clouds

def unit_sphere(xyz: np.ndarray) -> np.ndarray:
  """One cloud `[N, 3]` centred on its mean and scaled so its farthest point has norm 1."""
  c = xyz - xyz.mean(axis=0)
  return c / max(float(np.linalg.norm(c, axis=1).max()), 1e-12)


def subsample(xyz: np.ndarray, n: int, key: str, labels: np.ndarray | None = None):
  """n points of a cloud, uniformly at random, seeded by `key` (e.g. the file name).

  Fewer points than n: all of them, the rest drawn again (with replacement).
  Returns `(xyz [n, 3], labels [n] or None)`.
  """
  if len(xyz) == 0:
    raise DataError(f"{key}: the cloud has no points")
  rng = np.random.default_rng(zlib.crc32(key.encode()))
  if len(xyz) >= n:
    idx = np.sort(rng.choice(len(xyz), n, replace=False))
  else:
    idx = np.concatenate([np.arange(len(xyz)), rng.choice(len(xyz), n - len(xyz))])
  return xyz[idx], (None if labels is None else labels[idx])


def remove_plane(xyz: np.ndarray, border: np.ndarray, distance: float,
                 rounds: int = 3) -> np.ndarray:
  """Keep-mask `[N]` of the points farther than `distance` from the background plane.

  The plane is fitted by least squares (SVD) to the `border` points (the
  image's margin, where MVTec 3D-AD has only the support surface), refitted
  `rounds` times on its inliers (points within 3 x the median residual), then
  every point within `distance` of it is background.
  """
  pts = xyz[border]
  if len(pts) < 3:
    return np.ones(len(xyz), bool)
  for _ in range(rounds):
    c = pts.mean(axis=0)
    normal = np.linalg.svd(pts - c, full_matrices=False)[2][-1]
    res = np.abs((pts - c) @ normal)
    inl = res <= 3 * np.median(res) + 1e-12
    if inl.sum() < 3:
      break
    pts = pts[inl]
  c = pts.mean(axis=0)
  normal = np.linalg.svd(pts - c, full_matrices=False)[2][-1]
  return np.abs((xyz - c) @ normal) > distance


def organised_to_cloud(xyz: np.ndarray, mask: np.ndarray | None, plane_distance: float,
                       border: int = 10):
  """`(points [N, 3], labels [N] or None)` of an organised cloud `[H, W, 3]`.

  Drops invalid pixels (all-zero or non-finite) and, when `plane_distance` > 0,
  the background plane (`remove_plane` fitted on a `border`-pixel margin).
  """
  h, w, _ = xyz.shape
  valid = np.all(np.isfinite(xyz), -1) & np.any(xyz != 0, -1)
  edge = np.zeros((h, w), bool)
  edge[:border], edge[-border:], edge[:, :border], edge[:, -border:] = True, True, True, True
  pts = xyz[valid]
  keep = np.ones(len(pts), bool)
  if plane_distance > 0:
    keep = remove_plane(pts, edge[valid], plane_distance)
  labels = None if mask is None else (mask[valid] > 0)[keep]
  return pts[keep], labels


def _finish(xyz, labels, n_points, key):
  xyz, labels = subsample(xyz, n_points, key, labels)
  return unit_sphere(xyz).astype(np.float32), labels


def categories(root: str, name: str = "real3d") -> list[str]:
  """Class folders under `root` that hold a `train/` folder."""
  if not os.path.isdir(root):
    raise DataError(f"config.data.root={root!r} is not a folder; point it at the folder that "
                    f"holds the class folders ({name} layout, see rodajax/data/pointclouds.py)")
  found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, "train")))
  if not found:
    raise DataError(f"no class folder with a train/ subfolder under {root!r}; expected "
                    "<root>/<class>/train/*.pcd (Real3D-AD layout) or "
                    "<root>/<class>/train/good/xyz/*.tiff (MVTec 3D-AD)")
  return found


def _cat_dir(root, category):
  d = os.path.join(root, category)
  if not os.path.isdir(d):
    raise DataError(f"class folder {d!r} does not exist; classes under {root!r}: "
                    f"{', '.join(categories(root)) or 'none'}")
  return d


def read_labels_txt(path: str) -> tuple[np.ndarray, np.ndarray]:
  """`(xyz [N, 3], labels [N] bool)` of a Real3D-AD ground-truth file ("x y z label" lines)."""
  check_file(path, "ground-truth file")
  try:
    arr = np.loadtxt(path, dtype=np.float64, ndmin=2)
  except ValueError as e:
    raise DataError(f"{path}: unreadable ground truth ({e}); expected one 'x y z label' line "
                    "per point") from None
  if arr.shape[1] < 4:
    raise DataError(f"{path}: {arr.shape[1]} columns; expected 'x y z label' per line")
  return arr[:, :3].astype(np.float32), arr[:, 3] > 0


def _labels_for(xyz, gt_xyz, gt_labels, path):
  """Labels of `xyz` from a ground-truth cloud: same order when it matches, else nearest gt point."""
  if len(gt_xyz) == len(xyz) and np.allclose(gt_xyz, xyz, atol=1e-4):
    return gt_labels
  from scipy.spatial import cKDTree
  d, idx = cKDTree(gt_xyz).query(xyz)
  scale = np.linalg.norm(xyz.max(0) - xyz.min(0))
  if np.median(d) > 1e-3 * scale:
    raise DataError(f"{path}: its points do not match the test cloud (median distance "
                    f"{np.median(d):.3g}); the ground truth belongs to another cloud?")
  return gt_labels[idx]


def load_real3d(root: str, category: str, n_points: int = 2048,
                max_train: int | None = None) -> Dataset:
  """Real3D-AD / Anomaly-ShapeNet layout (module docstring); clouds subsampled to `n_points`."""
  cat = _cat_dir(root, category)
  train_files = sorted(glob.glob(os.path.join(cat, "train", "*.pcd")))
  if not train_files:
    raise DataError(f"no training clouds: {os.path.join(cat, 'train')}/*.pcd is empty")
  if max_train:
    train_files = train_files[:max_train]
  test_files = sorted(glob.glob(os.path.join(cat, "test", "*.pcd")))
  if not test_files:
    raise DataError(f"no test clouds: {os.path.join(cat, 'test')}/*.pcd is empty")
  train = [_finish(read_pcd(p), None, n_points, os.path.relpath(p, root))[0] for p in train_files]
  tests = []
  for p in test_files:
    stem = os.path.splitext(os.path.basename(p))[0]
    xyz = read_pcd(p)
    good = "good" in stem.lower()
    gt = os.path.join(cat, "gt", stem + ".txt")
    if good:
      point_labels, has_gt = np.zeros(len(xyz), bool), True
    elif os.path.isfile(gt):
      point_labels, has_gt = _labels_for(xyz, *read_labels_txt(gt), gt), True
    else:
      point_labels, has_gt = np.zeros(len(xyz), bool), False
    x, l = _finish(xyz, point_labels, n_points, os.path.relpath(p, root))
    tests.append((x, l, has_gt, "good" if good else _defect_type(stem)))
  return _dataset("real3d", category, train, train_files, tests, test_files)


def _dataset(name, category, train, train_files, tests, test_files) -> Dataset:
  """A point-cloud `Dataset` from training clouds and `(cloud, point labels, has gt, type)` per test cloud."""
  pts, labs, has, types = zip(*tests)
  return Dataset(name, category,
                 ImageSet(np.stack(train), np.zeros(len(train), np.int32), None,
                          np.ones(len(train), bool), ["good"] * len(train), train_files),
                 ImageSet(np.stack(pts), np.asarray([t != "good" for t in types], np.int32),
                          np.stack(labs), np.asarray(has), list(types), test_files))


def _defect_type(stem: str) -> str:
  """Defect type from a test file name: its letters without digits ('bulge_003' -> 'bulge')."""
  t = re.sub(r"[\d_\-]+", " ", stem).strip().split()
  return t[0] if t else "defect"


def load_mvtec3d_points(root: str, category: str, n_points: int = 2048,
                        max_train: int | None = None, plane_distance: float = 0.005) -> Dataset:
  """MVTec 3D-AD point clouds (module docstring); background plane removed, subsampled."""
  from rodajax.data.images import load_mask
  cat = _cat_dir(root, category)

  def files(split, t="*"):
    return sorted(glob.glob(os.path.join(cat, split, t, "xyz", "*.tiff")))
  train_files = files("train", "good")
  if not train_files:
    raise DataError(f"no training clouds: {os.path.join(cat, 'train', 'good', 'xyz')}/*.tiff "
                    "is empty")
  if max_train:
    train_files = train_files[:max_train]
  train = [_finish(organised_to_cloud(read_tiff(p), None, plane_distance)[0], None, n_points,
                   os.path.relpath(p, root))[0] for p in train_files]
  test_files = files("test")
  if not test_files:
    raise DataError(f"no test clouds: {os.path.join(cat, 'test')}/<type>/xyz/*.tiff is empty")
  tests = []
  for p in test_files:
    t = os.path.basename(os.path.dirname(os.path.dirname(p)))
    xyz = read_tiff(p)
    gt = os.path.join(os.path.dirname(os.path.dirname(p)), "gt",
                      os.path.splitext(os.path.basename(p))[0] + ".png")
    mask = None
    if t != "good" and os.path.isfile(gt):
      mask = load_mask(gt, None)
      if mask.shape != xyz.shape[:2]:
        raise DataError(f"{gt}: mask {mask.shape} does not match its cloud {xyz.shape[:2]}")
    cloud, l = organised_to_cloud(xyz, mask if mask is not None else np.zeros(xyz.shape[:2]),
                                  plane_distance)
    x, l = _finish(cloud, l, n_points, os.path.relpath(p, root))
    tests.append((x, l, t == "good" or mask is not None, t))
  return _dataset("mvtec3d_points", category, train, train_files, tests, test_files)


# ---------------------------------------------------------------------------- defects

DEFECTS = ("bulge", "dent", "hole", "crack")


def estimate_normals(xyz: np.ndarray, k: int = 16) -> np.ndarray:
  """Unit normals `[N, 3]` by PCA of each point's k nearest neighbours (sign arbitrary)."""
  from scipy.spatial import cKDTree
  _, idx = cKDTree(xyz).query(xyz, k)
  nb = xyz[idx] - xyz[idx].mean(axis=1, keepdims=True)
  return np.linalg.eigh(np.einsum("nki,nkj->nij", nb, nb))[1][:, :, 0]


def synthesise_defect(xyz: np.ndarray, normals: np.ndarray, kind: str, rng: np.random.Generator,
                      size: float = 0.04, depth: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
  """A defective copy of a unit-sphere cloud and its per-point labels (Anomaly-ShapeNet style).

  A patch of about `size` of the points around a random surface point
  (only points whose normal faces the same side, so thin walls keep their
  other face):
    bulge / dent: displaced along the centre's normal by +/- `depth` (unit-
      sphere radii) with a smooth falloff (1 - (d/r)^2)^2; labelled where the
      displacement exceeds 10% of `depth`.
    hole: the patch removed; the rim (points within 1.3 r of the centre that
      remain) labelled.
    crack: a band of width r/4 along a random tangent line through the centre,
      pushed inward by `depth`; the band labelled.
  Returns `(xyz [N', 3], labels [N'] bool)`.
  """
  from scipy.spatial import cKDTree
  if kind not in DEFECTS:
    raise ValueError(f"unknown defect {kind!r}; known: {', '.join(DEFECTS)}")
  n = len(xyz)
  c = int(rng.integers(n))
  k = max(8, int(size * n))
  d, idx = cKDTree(xyz).query(xyz[c], k)
  nc = normals[c]
  same = normals[idx] @ nc > -0.2
  idx, d = idx[same], d[same]
  r = max(float(d.max()), 1e-6)
  out, labels = xyz.copy(), np.zeros(n, bool)
  if kind in ("bulge", "dent"):
    w = (1 - np.clip(d / r, 0, 1) ** 2) ** 2
    sign = 1.0 if kind == "bulge" else -1.0
    out[idx] += sign * depth * w[:, None] * nc
    labels[idx[w > 0.1]] = True
    return out, labels
  if kind == "hole":
    removed = np.zeros(n, bool)
    removed[idx] = True
    rim = cKDTree(xyz).query_ball_point(xyz[c], 1.3 * r)
    labels[rim] = True
    keep = ~removed
    return out[keep], labels[keep]
  t = np.cross(nc, rng.normal(size=3))
  t /= max(np.linalg.norm(t), 1e-12)
  rel = xyz[idx] - xyz[c]
  off = np.linalg.norm(rel - np.outer(rel @ t, t), axis=1)
  band = idx[off < r / 4]
  out[band] -= depth * nc
  labels[band] = True
  return out, labels

