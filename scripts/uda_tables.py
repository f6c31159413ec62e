"""Prints the UDA tables of docs/results.md from finished runs' results.json files.

  python scripts/uda_tables.py runs/uda/pacs [runs/uda/pacs_con ...]
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.uda_train import table  # noqa: E402

for wd in sys.argv[1:]:
  recs = json.load(open(os.path.join(wd, "results.json")))
  for r in recs:
    if r["method"] != "source_only":
      r["method"] = f"{r['method']} ({r.get('alignment')})"
  seeds = sorted({r["seed"] for r in recs})
  print(f"\n### {wd}: AUC (%), mean ± std over classes and seeds {seeds}\n")
  print(table(recs))
  cl = [r for r in recs if r.get("d_purity") is not None]
  if cl:
    print("\nDominant set D: size and purity (share of true normals), mean over runs\n")
    print("| method | target | mean |D| | mean purity (%) | target anomalies in train |")
    print("|---|---|---|---|---|")
    for m in dict.fromkeys(r["method"] for r in cl):
      for t in dict.fromkeys(r["target"] for r in cl):
        rs = [r for r in cl if r["method"] == m and r["target"] == t]
        if rs:
          n = len(rs)
          print(f"| {m} | {t} | {sum(r['d_size'] for r in rs) / n:.1f} | "
                f"{sum(r['d_purity'] for r in rs) / n:.1f} | "
                f"{sum(r['n_target_anomalous'] for r in rs) / n:.1f} of "
                f"{sum(r['n_target_train'] for r in rs) / n:.1f} |")
  secs = sorted(r["seconds"] for r in recs)
  print(f"\nSeconds per run: median {secs[len(secs) // 2]:.1f}, max {secs[-1]:.1f} "
        f"(n = {len(secs)}; the first run of a process also caches the frozen features)\n")
