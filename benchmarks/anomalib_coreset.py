"""Times anomalib's KCenterGreedy on features from a .npy file (run with a Python that has torch).

Called by benchmarks/compare.py with `--torch-python`; not imported by the
project. anomalib's package __init__ pulls in Lightning, so the two modules
the sampler needs are loaded from their files (`pip install --no-deps anomalib`
is enough). Prints one JSON line: median seconds over the repeats.
"""
import importlib.util
import json
import os
import statistics
import sys
import time
import types

import numpy as np
import torch


def _load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[name] = mod
  spec.loader.exec_module(mod)
  return mod


def main():
  feats_path, ratio, repeats = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
  root = os.path.dirname(importlib.util.find_spec("anomalib").origin)
  comp = os.path.join(root, "models", "components")
  for pkg in ("anomalib", "anomalib.models", "anomalib.models.components"):
    sys.modules.setdefault(pkg, types.ModuleType(pkg))
  _load("anomalib.models.components.dimensionality_reduction",
        os.path.join(comp, "dimensionality_reduction", "random_projection.py"))
  kcg = _load("kcg", os.path.join(comp, "sampling", "k_center_greedy.py"))
  torch.set_num_threads(os.cpu_count())
  x = torch.from_numpy(np.load(feats_path))
  times = []
  for r in range(repeats + 1):
    torch.manual_seed(r)
    t = time.perf_counter()
    idx = kcg.KCenterGreedy(x, ratio).select_coreset_idxs()
    if r:          # the first run warms up
      times.append(time.perf_counter() - t)
  print(json.dumps({"seconds": statistics.median(times), "k": len(idx), "torch": torch.__version__,
                    "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
