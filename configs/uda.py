"""The UDA family: one `get_config(arg)` for PACS-layout folders and ELPV.

Run:
  python -m experiments.uda --config configs/uda.py:pacs
  python -m experiments.uda --config configs/uda.py:elpv

arg = "pacs" (Photo -> Art painting, Cartoon, Sketch; configs/pacs.py) or
"elpv" (mono -> poly; configs/elpv_uda.py). Sweeps are the config's tuples
(data.targets x data.classes x uda.methods x seeds).
"""
from configs.uda_base import get_base_config


def get_config(arg: str = "pacs"):
  c = get_base_config()
  if arg == "pacs":
    c.data.root = "../shared/data/pacs"
  elif arg == "elpv":
    c.data.name = "elpv"
    c.data.dataset_name = "elpv"
    c.data.source = "mono"
    c.data.targets = ("poly",)
    c.data.classes = ("normal",)
    c.data.max_test_per_class = 0
  else:
    raise ValueError(f"configs/uda.py:{arg!r}: expected pacs or elpv")
  return c
