"""RoDA against every baseline under the paper's four shifts (the main results table).

Run (bottle, MVTec AD; then tire, MVTec 3D-AD RGB with masks):
  python -m experiments.roda --config configs/roda_baselines.py --workdir runs/baselines_bottle
  python -m experiments.roda --config configs/roda_baselines.py --workdir runs/baselines_tire \
      --config.data.name=mvtec3d --config.data.root=../shared/data/mvtec_3d \
      --config.data.categories=tire

Methods: none (PatchCore), bn_stats (BN statistics re-estimated on the target part, no
gradient), moment (TTT++), kl (TTAC), hungarian, sinkhorn (continuous OT), discrete (Eq. 6),
discrete_copy, roda (discrete + augmentation); clean and severity 5, 20% adaptation / 80%
evaluation, seeds 0, 1, 2 (each redraws the split and the noise). Every method goes through
the same shift gate (and, with adapt.safeguard=True, the same held-out safeguard; each record
then also holds the unguarded result).
Expect: ~35 min per category on 2 CPU cores. docs/results.md holds the measured tables
(`python scripts/roda_tables.py <workdir>/results.json`).
"""
from configs import mvtec


def get_config():
  c = mvtec.get_config()
  c.shift.corruptions = ("gaussian_noise", "defocus_blur", "brightness", "contrast")
  c.adapt.methods = ("none", "bn_stats", "moment", "kl", "hungarian", "sinkhorn", "discrete", "discrete_copy", "roda")
  c.shift.corruptions = ("clean", "gaussian_noise", "defocus_blur", "brightness", "contrast")
  c.shift.seeds = (0, 1, 2)
  return c
