"""Share of the shifted test set used for adaptation (paper Table 5): 20%, 80%, 100%.

Run:
  python -m experiments.roda --config configs/roda_fraction.py --workdir runs/fraction_bottle

At 20% and 80% the remaining images are evaluated; at 100% adaptation and evaluation
use the same images (transductive). Records carry `adapt_fraction`; results.md has one
method x shift table per fraction. Expect ~25 min on bottle.
"""
from configs import mvtec


def get_config():
  c = mvtec.get_config()
  c.shift.corruptions = ("gaussian_noise", "defocus_blur", "brightness", "contrast")
  c.shift.adapt_fractions = (0.2, 0.8, 1.0)
  c.adapt.methods = ("none", "roda")
  return c
