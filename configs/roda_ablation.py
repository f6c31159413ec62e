"""Ablation of RoDA's parts (paper Table 4): continuous OT -> discrete -> + copies -> + augmentation.

Run:
  python -m experiments.roda --config configs/roda_ablation.py --workdir runs/ablation_bottle

Rows: sinkhorn (continuous plan, sum gamma*C), discrete (Eq. 6, one view), discrete_copy
(Eq. 6, `views` identical copies: as many patches as RoDA, no new information),
roda (Eq. 6, rotated / flipped views), plus hungarian (one-to-one assignment on
subsampled patches) and none. Four shifts at severity 5 on bottle; expect ~15 min.
"""
from configs import mvtec


def get_config():
  c = mvtec.get_config()
  c.shift.corruptions = ("gaussian_noise", "defocus_blur", "brightness", "contrast")
  c.adapt.methods = ("none", "sinkhorn", "discrete", "discrete_copy", "roda", "hungarian")
  return c
