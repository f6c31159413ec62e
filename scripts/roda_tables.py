"""Markdown tables (mean +- std over seeds, with n) from finished runs' results.json files.

  python scripts/roda_tables.py runs/main/*/results.json > tables.md
  python scripts/roda_tables.py --by run runs/bn_*/*/results.json   # a row per run folder
  python scripts/roda_tables.py --summary runs/gate/*/results.json  # a row per method

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
         "roda", "roda_source", "roda_prior", "roda_target_stats"]


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
  """Per dataset and value of `key` (e.g. `run`, the folder above each workdir): seed 0 values."""
  groups = {}
  for r in recs:
    groups.setdefault((f"{r['dataset']}/{r['category']}", r.get(key)), []).append(r)
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


def diagnostics(recs):
  """Per roda variant and dataset: the per-step plan diagnostics, averaged over steps, shifts, seeds."""
  return "\n".join(diagnostics_of(recs, m) for m in ORDER
                   if m.startswith("roda") and any(r["method"] == m for r in recs))


def diagnostics_of(recs, method):
  lines = [f"{method}:\n", "| data | steps | row_share | col_pairs_share | col_distinct / n | row_distinct / m | "
           "Sinkhorn iterations | converged |", "|---|---|---|---|---|---|---|---|"]
  for d in dict.fromkeys(f"{r['dataset']}/{r['category']}" for r in recs):
    steps = [m for r in recs if f"{r['dataset']}/{r['category']}" == d and r["method"] == method
             for m in r.get("step_metrics", [])]
    if not steps:
      continue
    avg = lambda f: statistics.fmean(f(m) for m in steps)
    lines.append(f"| {d} | {len(steps)} | {avg(lambda m: m['row_share']):.2f} | "
                 f"{avg(lambda m: m['col_pairs_share']):.2f} | "
                 f"{avg(lambda m: m['col_distinct'] / m['n_target']):.2f} | "
                 f"{avg(lambda m: m['row_distinct'] / m['n_bank']):.2f} | "
                 f"{avg(lambda m: m['sinkhorn_iters']):.1f} | "
                 f"{avg(lambda m: float(m['sinkhorn_converged'])):.2f} |")
  return "\n".join(lines) + "\n"


def safeguard(recs):
  """How often the safeguard kept the source model, per method and clean / shifted."""
  lines = ["| method | clean: kept source | shifted: kept source | n records |", "|---|---|---|---|"]
  for m in [m for m in ORDER if any(r["method"] == m and "safeguard" in r for r in recs)]:
    mine = [r for r in recs if r["method"] == m and "safeguard" in r]
    c = [r for r in mine if r["shift"] == "clean"]
    sh = [r for r in mine if r["shift"] != "clean"]
    frac = lambda rs: f"{sum(not r['safeguard']['adapted'] for r in rs)} / {len(rs)}"
    lines.append(f"| {m} | {frac(c)} | {frac(sh)} | {len(mine)} |")
  return "\n".join(lines) + "\n"


def summary(recs, metric="image_auroc"):
  """One row per method: its mean over the four shifts per dataset (mean over seeds), the mean
  of those, the (dataset, shift) cells more than a point below none's, and the largest clean
  gap to none. Only seeds that every method of a dataset has are used, so the rows compare the
  same splits."""
  datasets = list(dict.fromkeys(f"{r['dataset']}/{r['category']}" for r in recs))
  methods = [m for m in ORDER if any(r["method"] == m for r in recs)]
  mean, seeds_of = {}, {}
  for d in datasets:
    mine = [r for r in recs if f"{r['dataset']}/{r['category']}" == d]
    seeds_of[d] = sorted(set.intersection(*[{r["seed"] for r in mine if r["method"] == m}
                                            for m in methods if any(r["method"] == m for r in mine)]))
    kept = [r for r in mine if r["seed"] in seeds_of[d] and r.get(metric) is not None]
    for (m, s), by_seed in cells(kept, metric).items():
      mean[(d, m, s)] = statistics.fmean(by_seed.values())
  head = " | ".join(f"{d} (n = {len(seeds_of[d])})" for d in datasets)
  lines = [f"{metric}, mean of the four shifts (mean over seeds):\n",
           f"| method | {head} | mean | (data, shift) > 1 below none | worst clean gap to none |",
           "|---|" + "---|" * (len(datasets) + 3)]
  for m in methods:
    per = [statistics.fmean([mean[(d, m, s)] for s in SHIFTS])
           if all((d, m, s) in mean for s in SHIFTS) else None for d in datasets]
    harm = sum(mean[(d, m, s)] < mean[(d, "none", s)] - 1 for d in datasets for s in SHIFTS
               if (d, m, s) in mean and (d, "none", s) in mean)
    gaps = [mean[(d, m, "clean")] - mean[(d, "none", "clean")] for d in datasets
            if (d, m, "clean") in mean and (d, "none", "clean") in mean]
    lines.append(f"| {m} | " + " | ".join(fmt([v]) for v in per)
                 + f" | {fmt([statistics.fmean(per)]) if None not in per else '–'} | {harm}"
                 + f" | {f'{min(gaps):+.2f}' if gaps else '–'} |")
  return "\n".join(lines) + "\n"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("files", nargs="+")
  ap.add_argument("--by", default=None)
  ap.add_argument("--diagnostics", action="store_true", help="plan diagnostics and safeguard")
  ap.add_argument("--summary", action="store_true",
                  help="one row per method: mean of shifts per dataset, harm count, clean gap")
  ap.add_argument("--seed", type=int, default=None, help="only the records of this seed")
  ap.add_argument("--split-bn", action="store_true",
                  help="name roda rows roda_<bn_mode> (to put runs with different BN modes side by side)")
  args = ap.parse_args()
  recs = []
  for f in args.files:
    for r in json.load(open(f)):
      r["run"] = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(f))))
      recs.append(r)
  recs = [r for r in recs if r.get("severity") in (0, 5) and r.get("adapt_fraction", 0.2) == 0.2
          and (args.seed is None or r.get("seed") == args.seed)]
  if args.split_bn:
    for r in recs:
      if r["method"] == "roda":
        r["method"] = f"roda_{r['bn_mode']}"
    # none / bn_stats do not depend on the BN mode: keep one record per (data, shift, seed).
    seen, keep = set(), []
    for r in recs:
      k = (r["dataset"], r["category"], r["shift"], r["seed"], r["method"])
      if k not in seen:
        seen.add(k)
        keep.append(r)
    recs = keep
  if args.by:
    print(by_key(recs, args.by))
    return
  if args.summary:
    for metric in ("image_auroc", "pixel_auroc"):
      if any(r.get(metric) is not None for r in recs):
        print(summary([r for r in recs if metric == "image_auroc" or r.get(metric) is not None], metric))
    return
  if args.diagnostics:
    print(diagnostics(recs))
    print(safeguard(recs))
    return
  datasets = list(dict.fromkeys(f"{r['dataset']}/{r['category']}" for r in recs))
  for d in datasets:
    mine = [r for r in recs if f"{r['dataset']}/{r['category']}" == d]
    for metric in ("image_auroc", "pixel_auroc", "aupro"):
      if any(r.get(metric) is not None for r in mine):
        print(table(mine, metric, d))


if __name__ == "__main__":
  main()
