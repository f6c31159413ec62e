"""Paper Fig. 5a: how much of the alignment loss lands on anomalous target patches.

Run:
  python -m experiments.assignments --config configs/roda_assignment.py

Needs ground-truth masks: MVTec 3D-AD tire (RGB) by default. For each shift at
severity 5 and each OT method (continuous Sinkhorn, discrete, discrete + copy,
RoDA = discrete + augmentation), the first transport problem on the 20%
adaptation part (balanced: 4,096 target patches x 4,096 bank entries). The paper
expects the discrete plan to give anomalous patches a smaller share than the
continuous plan's (their fraction of patches); measured on tire it gives 1.3-1.9x
that share (docs/results.md). A few minutes.
Writes <workdir>/assignments.{json,md}.
"""
from configs.base import get_base_config


def get_config():
  c = get_base_config()
  c.data.name = "mvtec3d"
  c.data.root = "../shared/data/mvtec_3d"
  c.data.categories = ("tire",)
  c.data.max_train = 0
  c.shift.corruptions = ("gaussian_noise", "defocus_blur", "brightness", "contrast")
  c.shift.adapt_fraction = 0.2
  c.adapt.methods = ("sinkhorn", "discrete", "discrete_copy", "roda")
  return c
