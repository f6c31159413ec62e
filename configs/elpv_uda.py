"""UDA one-class AD on ELPV solar cells: mono (source) -> poly (target), normal = defect-free.

Run:
  python -m experiments.uda --config configs/elpv_uda.py

Classes: normal (defect probability 0) and defective (>= 2/3); the target train set
mixes poly normals with 10% defective poly cells, unlabelled. Embedded data (the
elpv-dataset package), so this runs anywhere. Expect a few minutes on 2 CPU cores.
"""
from configs import uda


def get_config():
  c = uda.get_config("elpv")
  c.seeds = 3
  c.uda.methods = ("source_only", "all_target", "cluster_psi", "oracle")
  return c
