"""Severity sweep (paper Fig. 5b): image AUROC against ImageNet-C severity 1-5.

Run:
  python -m experiments.roda --config configs/roda_severity.py --workdir runs/severity_bottle

PatchCore (none), BN statistics and RoDA at severities 1-5 of the four shifts on
bottle; the plot is written to <workdir>/figures/severity.png (one panel per shift).
Expect: ~40 min on 2 CPU cores (20 RoDA runs); the gap between RoDA and none grows
with the severity.
"""
from configs import mvtec


def get_config():
  c = mvtec.get_config()
  c.shift.corruptions = ("gaussian_noise", "defocus_blur", "brightness", "contrast")
  c.shift.severities = (1, 2, 3, 4, 5)
  c.adapt.methods = ("none", "bn_stats", "roda")
  return c
