"""Build an Anomaly-ShapeNet-style point-cloud dataset from meshes (or clean clouds).

  python -m experiments.make_pointclouds --meshes FOLDER_OR_FILES --out DIR \
      [--train 40] [--good 20] [--defective 20] [--points 4096] [--seed 0]
  python -m experiments.make_pointclouds --clouds FILE.npz[,FILE2.npz] --out DIR ...

One class per mesh (STL/PLY; the file stem names it) or per `.npz` of clean
clouds (`points [M, P, 3]`, e.g. ModelNet10's; the cloud at --index is the
part). Per class, written in the Real3D-AD layout that
`python -m experiments.roda --config configs/pointcloud.py` reads:

  DIR/<class>/train/<class>_NNN.pcd          normal samples (binary PCD)
  DIR/<class>/test/good_NNN.pcd              normal test samples
  DIR/<class>/test/<defect>_NNN.pcd          defective samples: bulge, dent, hole, crack
  DIR/<class>/gt/<defect>_NNN.txt            "x y z label" per point of that cloud

Normal samples vary as a production line does: a new surface sampling (mesh)
or a random 90% subset (clouds), a small rotation about the up axis
(--rotate degrees), a jitter of --jitter unit-sphere radii. Clouds are
unit-sphere normalised. These are development sets: their numbers are not the
paper's (MVTec 3D-AD / Real3D-AD), which users bring themselves.
"""
import glob
import os

from experiments import cli

FLAGS = [cli.Flag("out", "output folder", required=True),
         cli.Flag("meshes", "mesh folder, or comma-separated .stl/.ply files", ""),
         cli.Flag("clouds", "comma-separated .npz files of clean clouds (points [M, P, 3])", ""),
         cli.Flag("index", "which cloud of each .npz is the part", "0"),
         cli.Flag("train", "normal training samples per class", "40"),
         cli.Flag("good", "normal test samples per class", "20"),
         cli.Flag("defective", "defective test samples per class (cycling the defect kinds)", "20"),
         cli.Flag("points", "points per mesh sample", "4096"),
         cli.Flag("rotate", "largest rotation about the up axis, degrees", "5"),
         cli.Flag("jitter", "per-point Gaussian jitter, unit-sphere radii", "0.002"),
         cli.Flag("size", "defect patch, share of the points", "0.04"),
         cli.Flag("depth", "bulge/dent/crack depth, unit-sphere radii", "0.04"),
         cli.Flag("up", "up axis of the sources (x, y or z)", "y"),
         cli.Flag("seed", "seed", "0")]


def sources(args):
  """[(class name, sampler(rng) -> (xyz, normals))]."""
  import numpy as np

  from rodajax.data import pointclouds as pc
  out = []
  f = args.flags
  if f["meshes"]:
    spec = f["meshes"]
    files = (sorted(p for p in glob.glob(os.path.join(spec, "*"))
                    if p.lower().endswith((".stl", ".ply")))
             if os.path.isdir(spec) else [p for p in spec.split(",") if p])
    if not files:
      raise cli.UserError(f"--meshes {spec!r}: no .stl or .ply files there")
    for path in files:
      verts, faces = pc.read_mesh(path)
      n = int(f["points"])
      out.append((os.path.splitext(os.path.basename(path))[0].lower(),
                  lambda rng, v=verts, fc=faces, n=n: pc.sample_surface(v, fc, n, rng)))
  for path in [p for p in f["clouds"].split(",") if p]:
    if not os.path.isfile(path):
      raise cli.UserError(f"--clouds: {path!r} does not exist")
    pts = np.load(path)["points"].astype(np.float64)
    base = pts[int(f["index"])]
    normals = pc.estimate_normals(base)

    def sampler(rng, b=base, nr=normals):
      keep = np.sort(rng.choice(len(b), int(0.9 * len(b)), replace=False))
      return b[keep], nr[keep]
    out.append((os.path.splitext(os.path.basename(path))[0].lower(), sampler))
  if not out:
    raise cli.UserError("give --meshes or --clouds")
  return out


def main(argv):
  args = cli.parse(argv, __doc__, FLAGS)
  import numpy as np
  from tqdm import tqdm

  from rodajax.data import pointclouds as pc
  f = args.flags
  root = f["out"]
  cli.writable_folder(root, "output folder", "choose another --out")
  up = "xyz".index(f["up"])
  rng = np.random.default_rng(int(f["seed"]))

  def normal_sample():
    xyz, nrm = sampler(rng)
    xyz = pc.unit_sphere(xyz)
    a = np.deg2rad(rng.uniform(-1, 1) * float(f["rotate"]))
    i, j = [k for k in range(3) if k != up]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    xyz, nrm = xyz @ rot.T, nrm @ rot.T
    return xyz + rng.normal(0, float(f["jitter"]), xyz.shape), nrm

  for name, sampler in sources(args):
    cat = os.path.join(root, name)
    for sub in ("train", "test", "gt"):
      os.makedirs(os.path.join(cat, sub), exist_ok=True)
    for i in tqdm(range(int(f["train"])), desc=f"{name}: train"):
      pc.write_pcd(os.path.join(cat, "train", f"{name}_{i:03d}.pcd"), normal_sample()[0])
    for i in range(int(f["good"])):
      pc.write_pcd(os.path.join(cat, "test", f"good_{i:03d}.pcd"), normal_sample()[0])
    for i in tqdm(range(int(f["defective"])), desc=f"{name}: defects"):
      kind = pc.DEFECTS[i % len(pc.DEFECTS)]
      xyz, nrm = normal_sample()
      bad, labels = pc.synthesise_defect(xyz, nrm, kind, rng, float(f["size"]), float(f["depth"]))
      stem = f"{kind}_{i:03d}"
      pc.write_pcd(os.path.join(cat, "test", stem + ".pcd"), bad)
      np.savetxt(os.path.join(cat, "gt", stem + ".txt"),
                 np.concatenate([bad, labels[:, None]], axis=1), fmt="%.7g %.7g %.7g %d")
  print(f"wrote {root}")


if __name__ == "__main__":
  cli.run(main)
