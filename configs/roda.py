"""The RoDA experiment family: one `get_config(arg)` for every table (big_vision style).

Run:
  python -m experiments.roda --config configs/roda.py:elpv
  python -m experiments.roda --config configs/roda.py:bottle,baselines --workdir runs/baselines_bottle
  python -m experiments.roda --config configs/roda.py:tire,severity

arg = "<dataset>[,<study>]":
  dataset  elpv (embedded, the default) | bottle (MVTec AD) | tire (MVTec 3D-AD RGB, masks)
  study    main      clean + the four severity-5 shifts, none and roda (the default)
           baselines clean + shifts x every method, seeds (0, 1, 2): the main results table
           severity  severities 1-5 of the shifts, none / bn_stats / roda (paper Fig. 5b)
           fraction  adaptation fractions 0.2 / 0.8 / 1.0 (transductive at 1.0)
           ablation  clean + shifts x sinkhorn / discrete / discrete_copy / roda / hungarian, seeds
                     (0, 1, 2) (paper Table 4)
           clean     PatchCore only: clean images, no adaptation
The sweeps are the config's tuples (shift.corruptions x shift.severities x
shift.seeds x shift.adapt_fractions x adapt.methods); every record of the
product lands in <workdir>/results.{json,md}. configs/mvtec.py, elpv.py and
roda_*.py are fixed points of this family (tests/test_configs.py).
"""
from configs.base import get_base_config

SHIFTS = ("gaussian_noise", "defocus_blur", "brightness", "contrast")
METHODS = ("none", "bn_stats", "moment", "kl", "hungarian", "sinkhorn", "discrete",
           "discrete_copy", "roda")
DATASETS = ("elpv", "bottle", "tire")
STUDIES = ("main", "baselines", "severity", "fraction", "ablation", "clean")


def dataset(c, name: str) -> None:
  if name == "elpv":
    c.data.name, c.data.categories = "elpv", ("mono", "poly")
    return
  c.data.name, c.data.max_train = ("mvtec", 0) if name == "bottle" else ("mvtec3d", 0)
  c.data.root = "../shared/data/mvtec_ad" if name == "bottle" else "../shared/data/mvtec_3d"
  c.data.categories = (name,)


def study(c, name: str) -> None:
  c.shift.severities = (5,)
  c.adapt.methods = ("none", "roda")
  c.shift.corruptions = ("clean",) + SHIFTS
  if name == "baselines":
    c.adapt.methods = METHODS
    c.shift.seeds = (0, 1, 2)
  elif name == "severity":
    c.shift.corruptions, c.shift.severities = SHIFTS, (1, 2, 3, 4, 5)
    c.adapt.methods = ("none", "bn_stats", "roda")
  elif name == "fraction":
    c.shift.corruptions, c.shift.adapt_fractions = SHIFTS, (0.2, 0.8, 1.0)
  elif name == "ablation":
    c.adapt.methods = ("none", "sinkhorn", "discrete", "discrete_copy", "roda", "hungarian")
    c.shift.seeds = (0, 1, 2)
  elif name == "clean":
    c.shift.corruptions, c.adapt.methods = ("clean",), ("none",)


def get_config(arg: str = "elpv"):
  parts = [p.strip() for p in arg.split(",") if p.strip()] or ["elpv"]
  if parts[0] not in DATASETS or len(parts) > 2 or (len(parts) == 2 and parts[1] not in STUDIES):
    raise ValueError(f"configs/roda.py:{arg!r}: expected <dataset>[,<study>] with dataset in "
                     f"{', '.join(DATASETS)} and study in {', '.join(STUDIES)}; e.g. "
                     "configs/roda.py:bottle,baselines")
  c = get_base_config()
  dataset(c, parts[0])
  if parts[0] != "elpv" or len(parts) == 2:
    c.shift.adapt_fraction = 0.2
    study(c, parts[1] if len(parts) == 2 else "main")
  return c
