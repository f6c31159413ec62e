"""PatchCore on the embedded ELPV solar cells (the default of `python -m experiments.roda`).

Run:
  python -m experiments.roda                       # this config
  python -m experiments.roda --config configs/elpv.py --config.data.categories=mono

Expect (2 CPU cores): a few minutes; image AUROC per cell type (mono, poly) in
runs/elpv/results.md. ELPV has no pixel masks, so pixel AUROC and AUPRO are null.
"""
from configs.base import get_base_config


def get_config():
  c = get_base_config()
  c.data.name = "elpv"
  c.data.categories = ("mono", "poly")
  return c
