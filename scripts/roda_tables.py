"""Markdown tables (mean +- std over seeds, with n) from finished runs' results.json files.

  python scripts/roda_tables.py runs/main/*/results.json > tables.md
  python scripts/roda_tables.py --by bn_mode runs/bn_*/*/results.json   # a column per BN mode

Per (dataset/category): a method x shift table of image AUROC (and pixel AUROC,
AUPRO where masks exist), the clean column first, then the mean over the four
shifts; `(unguarded)` rows show the same method without the safeguard. With
--by KEY, one table of the mean-over-shifts per (dataset, KEY) instead.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHIFTS = ["gaussian_noise", "defocus_blur", "brightness", "contrast"]
ORDER = ["none", "bn_stats", "moment", "kl", "hungarian", "sinkhorn", "discrete", "discrete_copy",
         "roda"]


def fmt(vals):
  vals = [v for v in vals if v is not None]
  if not vals:
    return "–"
  m = statistics.fmean(vals)
  return f"{m:.2f} ± {statistics.pstdev(vals):.2f}" if len(vals) > 1 else f"{m:.2f}"


def mean_or_none(vals):
  vals = [v for v in vals if v is not None]
  return statistics.fmean(vals) if vals else None


def value(r, metric, guarded=True):
  if not guarded and "unguarded" in r:
    return r["unguarded"].get(metric)
  return r.get(metric)


def cells(recs, metric, guarded=True):
  """{(method, shift): {seed: value}} and the per-seed mean over the four shifts."""
  out = {}
  for r in recs:
    out.setdefault((r["method"], r["shift"]), {})[r["seed"]] = value(r, metric, guarded)
  return out


def table(recs, metric, label):
  methods = [m for m in ORDER if any(r["method"] == m for r in recs)]
  seeds = sorted({r["seed"] for r in recs})
  lines = [f"#### {label}: {metric} (mean ± std over seeds {seeds}, n = {len(seeds)})\n",
           "| method | clean | " + " | ".join(SHIFTS) + " | mean of shifts |",
           "|---|" + "---|" * (len(SHIFTS) + 2)]
  for guarded in (True, False):
    c = cells(recs, metric, guarded)
    for m in methods:
      if not guarded and not any("unguarded" in r for r in recs if r["method"] == m):
        continue
      row = [fmt(c.get((m, "clean"), {}).values())]
      row += [fmt(c.get((m, s), {}).values()) for s in SHIFTS]
      per_seed = [mean_or_none([c.get((m, s), {}).get(sd) for s in SHIFTS]) for sd in seeds]
      row.append(fmt(per_seed))
      name = m if guarded else f"{m} (unguarded)"
      lines.append(f"| {name} | " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def by_key(recs, key, metric="image_auroc"):
  """Mean over the four shifts (and clean), per dataset and value of `key`, roda rows."""
  groups = {}
  for r in recs:
    groups.setdefault((f"{r['dataset']}/{r['category']}", r.get(key, r.get("bn_mode"))), []).append(r)
  lines = [f"| data | {key} | method | clean | mean of shifts | " + " | ".join(SHIFTS) + " |",
           "|---|---|---|---|---|" + "---|" * len(SHIFTS)]
  for (data, kv), rs in sorted(groups.items(), key=lambda x: (x[0][0], str(x[0][1]))):
    for m in [m for m in ORDER if any(r["method"] == m for r in rs)]:
      mine = [r for r in rs if r["method"] == m]
      v = {r["shift"]: r.get(metric) for r in mine}
      sh = [v.get(s) for s in SHIFTS]
      lines.append(f"| {data} | {kv} | {m} | {fmt([v.get('clean')])} | {fmt([mean_or_none(sh)])} | "
                   + " | ".join(fmt([x]) for x in sh) + " |")
  return "\n".join(lines) + "\n"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("files", nargs="+")
  ap.add_argument("--by", default=None)
  args = ap.parse_args()
  recs = []
  for f in args.files:
    for r in json.load(open(f)):
      r.setdefault("bn_mode", os.path.basename(os.path.dirname(os.path.dirname(f))))
      recs.append(r)
  recs = [r for r in recs if r.get("severity") in (0, 5) and r.get("adapt_fraction", 0.2) == 0.2]
  if args.by:
    print(by_key(recs, args.by))
    return
  datasets = list(dict.fromkeys(f"{r['dataset']}/{r['category']}" for r in recs))
  for d in datasets:
    mine = [r for r in recs if f"{r['dataset']}/{r['category']}" == d]
    for metric in ("image_auroc", "pixel_auroc", "aupro"):
      if any(r.get(metric) is not None for r in mine):
        print(table(mine, metric, d))


if __name__ == "__main__":
  main()
