"""Ablation of RoDA's parts (paper Table 4): continuous OT -> discrete -> + copies -> + augmentation.

Run:
  python -m experiments.roda --config configs/roda_ablation.py --workdir runs/ablation_bottle

Rows: sinkhorn (continuous plan, sum gamma*C), discrete (Eq. 6, one view), discrete_copy
(Eq. 6, `views` identical copies: as many patches as RoDA, no new information),
roda (Eq. 6, rotated / flipped views), plus hungarian (one-to-one assignment on
subsampled patches) and none. Clean and the four shifts at severity 5, seeds 0-2, on bottle;
expect about 35 min on 2 CPU cores (measured 2026-12-05: 27 min without the roda rows).
docs/results.md ("Table 4") has the four dev datasets.
"""
from configs import mvtec


def get_config():
  c = mvtec.get_config()
  c.adapt.methods = ("none", "sinkhorn", "discrete", "discrete_copy", "roda", "hungarian")
  c.shift.seeds = (0, 1, 2)
  return c
