"""Per-class tables of a point-cloud run (configs/pointcloud.py): mean +- std over seeds, with n.

  python scripts/pointcloud_tables.py runs/pointcloud_dev/results.json > tables.md

One table per metric (object AUROC = image_auroc, point AUROC = pixel_auroc,
AUPRO): a row per class and a mean row; a column per (shift, method) found.
The mean row averages the per-seed class means (std over seeds). Then, per
shift, the share of the clean-to-shifted gap each method recovers
((method - none) / (clean none - shifted none), on the class-mean values),
and each method's clean change.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from roda_tables import fmt  # noqa: E402

ORDER = ["none", "bn_stats", "moment", "kl", "hungarian", "sinkhorn", "discrete", "discrete_copy",
         "roda"]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("files", nargs="+")
  args = ap.parse_args()
  recs = []
  for f in args.files:
    data = json.load(open(f))
    recs += data["records"] if isinstance(data, dict) else data
  shifts = list(dict.fromkeys(f"{r['shift']}{r['severity'] or ''}" for r in recs))
  shifts.sort(key=lambda s: s != "clean")
  methods = [m for m in ORDER if any(r["method"] == m for r in recs)]
  cols = [(s, m) for s in shifts for m in methods
          if any(f"{r['shift']}{r['severity'] or ''}" == s and r["method"] == m for r in recs)]
  classes = sorted({r["category"] for r in recs})
  seeds = sorted({r["seed"] for r in recs})
  val = {}
  for r in recs:
    val[(r["category"], f"{r['shift']}{r['severity'] or ''}", r["method"], r["seed"])] = r

  for metric, label in (("image_auroc", "object AUROC"), ("pixel_auroc", "point AUROC"),
                        ("aupro", "AUPRO (0.3)")):
    print(f"#### {label} (mean ± std over seeds {seeds}, n = {len(seeds)})\n")
    print("| class | " + " | ".join(f"{s} {m}" for s, m in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for c in classes:
      row = [fmt([val.get((c, s, m, sd), {}).get(metric) for sd in seeds]) for s, m in cols]
      print(f"| {c} | " + " | ".join(row) + " |")
    means = {}
    for s, m in cols:
      per_seed = []
      for sd in seeds:
        v = [val.get((c, s, m, sd), {}).get(metric) for c in classes]
        v = [x for x in v if x is not None]
        if v:
          per_seed.append(statistics.fmean(v))
      means[(s, m)] = per_seed
    print("| **mean** | " + " | ".join(f"**{fmt(means[k])}**" for k in cols) + " |\n")
    mean = {k: statistics.fmean(v) for k, v in means.items() if v}
    clean = mean.get(("clean", "none"))
    lines = []
    for s in shifts[1:]:
      base = mean.get((s, "none"))
      if clean is None or base is None:
        continue
      gap = clean - base
      for m in methods[1:]:
        if (s, m) in mean:
          rec = (mean[(s, m)] - base) / gap * 100 if abs(gap) > 1e-9 else float("nan")
          lines.append(f"{s}: {m} recovers {rec:.0f}% of the {gap:.2f}-point gap")
    for m in methods[1:]:
      if ("clean", m) in mean and clean is not None:
        lines.append(f"clean: {m} changes the mean by {mean[('clean', m)] - clean:+.2f}")
    if lines:
      print("\n".join(f"- {x}" for x in lines) + "\n")


if __name__ == "__main__":
  main()
