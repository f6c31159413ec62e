"""Prints the markdown tables of docs/results.md from finished runs' results.json files.

  python scripts/results_tables.py runs/main/bottle runs/main/tire
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rodajax import report  # noqa: E402

MAIN = ["none", "bn_stats", "moment", "kl", "sinkhorn", "discrete", "roda"]
ABLATION = ["sinkhorn", "hungarian", "discrete", "discrete_copy", "roda"]
SHIFTS = ["gaussian_noise", "defocus_blur", "brightness", "contrast"]


def pick(recs, methods, shifts, severity=5, fraction=0.2):
  out = [r for r in recs if r["method"] in methods and r["shift"] in shifts
         and r["severity"] == severity and r.get("adapt_fraction", 0.2) == fraction]
  return sorted(out, key=lambda r: (methods.index(r["method"]), shifts.index(r["shift"])))


for wd in sys.argv[1:]:
  recs = json.load(open(os.path.join(wd, "results.json")))
  cat = recs[0]["category"]
  for metric in ("image_auroc", "pixel_auroc", "aupro"):
    main = pick(recs, MAIN, SHIFTS)
    if all(r.get(metric) is None for r in main):
      continue
    print(f"\n### {cat}: {metric}, severity 5, 20% adaptation\n")
    print(report.pivot(main, "method", "shift", metric))
  print(f"\n### {cat}: ablation (image AUROC)\n")
  print(report.pivot(pick(recs, ABLATION, SHIFTS), "method", "shift", "image_auroc"))
  clean = [r for r in recs if r["shift"] == "clean"]
  if clean:
    print(f"\n### {cat}: clean (20% adaptation part left out)\n")
    print(report.markdown_table(clean, ("method", "image_auroc", "pixel_auroc", "aupro", "n_test")))
  sev = [r for r in recs if r["method"] in ("none", "roda") and r.get("adapt_fraction") == 0.2
         and r["shift"] in ("gaussian_noise", "contrast")]
  if len({r["severity"] for r in sev}) > 1:
    for s in ("gaussian_noise", "contrast"):
      rows = sorted([r for r in sev if r["shift"] == s], key=lambda r: r["severity"])
      print(f"\n### {cat}: severity sweep, {s} (image AUROC)\n")
      print(report.pivot(rows, "method", "severity", "image_auroc"))
  fr = [r for r in recs if r["method"] in ("none", "roda") and r["severity"] == 5
        and r["shift"] in ("gaussian_noise", "contrast")]
  if len({r.get("adapt_fraction") for r in fr}) > 1:
    for r in fr:
      r["method_fraction"] = f"{r['method']} @ {int(100 * r['adapt_fraction'])}%"
    fr.sort(key=lambda r: (r["method"], r["adapt_fraction"]))
    print(f"\n### {cat}: adaptation fraction (image AUROC)\n")
    print(report.pivot(fr, "method_fraction", "shift", "image_auroc"))
