"""One table from several UDA workdirs (ablations, sweeps): rows label/method, columns targets.

  python -m experiments.uda_tables "MMD=runs/uda/mmd" "contrastive=runs/uda/con" [--methods m,..]
      [--targets t,..] [--seeds 0,1,2] [--plot sweep.png --xlabel ..] [--paired LABEL]

With --plot, a label "X|SERIES" puts that workdir at x = X on the line named SERIES (several
settings of a sweep in one figure, e.g. "20%|GMM=runs/gmm20").

With --paired LABEL, each row is also compared with the row of workdir LABEL and the same method
on the same splits (target, normal class, seed): the mean of the differences ± 1.96 standard
errors (std with ddof 1 over sqrt(n)) and how many splits are above the reference.

Cells: AUC mean ± std over normal classes and seeds (n); then the mean over targets, the
dominant set's size and purity, the contrastive negatives (how many, the
anomalous share; contrastive runs only: labels used for reporting only), the feature variance ratio and the CPU time of the runs.
"""
import argparse
import json
import os

import numpy as np

from experiments import uda_train


def rows(specs, methods=None, targets=None, seeds=None):
  out = []
  for spec in specs:
    label, _, path = spec.rpartition("=")
    path, _, only = path.partition("@")
    only = [m for m in only.split(",") if m]
    f = os.path.join(path, "results.json")
    if not os.path.exists(f):
      raise SystemExit(f"{f} does not exist: run `python -m experiments.uda --workdir {path}` first")
    for r in json.load(open(f)):
      if ((methods and r["method"] not in methods) or (only and r["method"] not in only)
          or (targets and r["target"] not in targets) or (seeds and r["seed"] not in seeds)):
        continue
      name = r["method"] if not label else f"{label}: {r['method']}"
      out.append({**r, "row": name, "label": label})
  return out


def summary(recs) -> str:
  lines = ["| row | n runs | mean D size | mean D purity (%) | negatives | anomalous negatives (%) "
           "| mean var ratio | CPU s (sum) |", "|---|---|---|---|---|---|---|---|"]
  for name in dict.fromkeys(r["row"] for r in recs):
    rs = [r for r in recs if r["row"] == name]
    pur = [r["d_purity"] for r in rs if r.get("d_purity") is not None]
    lines.append(f"| {name} | {len(rs)} | {np.mean([r['d_size'] for r in rs]):.1f} | "
                 f"{np.mean(pur):.1f} | " if pur else f"| {name} | {len(rs)} | 0 | – | ")
    # only the contrastive loss has negatives (records older than the negatives switch lack them)
    con = [r for r in rs if r.get("alignment") == "contrastive" and "neg_size" in r]
    neg = [r["neg_anomalous"] for r in con if r.get("neg_anomalous") is not None]
    lines[-1] += (f"{np.mean([r['neg_size'] for r in con]):.1f} | " if con else "– | ")
    lines[-1] += f"{np.mean(neg):.1f} | " if neg else "– | "
    lines[-1] += (f"{np.mean([r['var_ratio'] for r in rs]):.3f} | "
                  f"{sum(r['seconds'] for r in rs):.0f} |")
  return "\n".join(lines) + "\n"


def paired(recs, ref_label: str) -> str:
  """Each row minus the reference workdir's row of the same method, split by split.

  A split is (target, normal class, seed); rows without a split in common with the
  reference are left out. Returns a markdown table: n, mean ± 1.96 s.e., splits above.
  """
  split = lambda r: (r["method"], r["target"], r["normal_class"], r["seed"])
  ref = {split(r): r["auc"] for r in recs if r["label"] == ref_label}
  if not ref:
    raise SystemExit(f"--paired {ref_label!r} names no workdir label given: "
                     f"{sorted({r['label'] for r in recs})}")
  lines = [f"| row | n splits | paired minus {ref_label} (mean ± 1.96 s.e.) | splits above |",
           "|---|---|---|---|"]
  for name in dict.fromkeys(r["row"] for r in recs if r["label"] != ref_label):
    d = np.asarray([r["auc"] - ref[split(r)] for r in recs
                    if r["row"] == name and split(r) in ref])
    if len(d) == 0:
      continue
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    lines.append(f"| {name} | {len(d)} | {d.mean():+.2f} ± {1.96 * se:.2f} | "
                 f"{int((d > 0).sum())} of {len(d)} |")
  return "\n".join(lines) + "\n"


def plot(recs, path, xlabel="") -> None:
  """Mean AUC per (method, target) against the workdir labels, in the order given (a sweep)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  x_of = lambda lab: lab.partition("|")[0]
  series_of = lambda lab: lab.partition("|")[2]
  labels = list(dict.fromkeys(x_of(r["label"]) for r in recs))
  fig, ax = plt.subplots(figsize=(6, 4))
  keys = dict.fromkeys((series_of(r["label"]), r["method"], r["target"]) for r in recs)
  for s, m, t in keys:
    xs, ys, es = [], [], []
    for i, lab in enumerate(labels):
      v = [r["auc"] for r in recs
           if (x_of(r["label"]), series_of(r["label"]), r["method"], r["target"]) == (lab, s, m, t)]
      if v:
        xs.append(i); ys.append(np.mean(v)); es.append(np.std(v) / np.sqrt(len(v)))
    if xs:
      name = f"{s}: {m}" if s else m
      ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{name} ({t})")
  ax.set_xticks(range(len(labels)), labels)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("AUC (%), mean ± s.e. over classes and seeds")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("specs", nargs="+", help="LABEL=WORKDIR[@method,..] (LABEL may be empty: "
                  "=WORKDIR; @ keeps only those methods of that workdir)")
  ap.add_argument("--methods", default="", help="only these methods (comma-separated)")
  ap.add_argument("--targets", default="", help="only these targets (comma-separated)")
  ap.add_argument("--seeds", default="", help="only these seeds (comma-separated)")
  ap.add_argument("--plot", default="", help="also draw AUC against the labels (a sweep) to this PNG")
  ap.add_argument("--xlabel", default="", help="the plot's x axis title")
  ap.add_argument("--paired", default="", help="also compare every row with this workdir label's "
                  "row of the same method, split by split")
  args = ap.parse_args()
  csv = lambda s: [x for x in s.split(",") if x]
  recs = rows(args.specs, csv(args.methods), csv(args.targets), [int(x) for x in csv(args.seeds)])
  if not recs:
    raise SystemExit("no record matches the workdirs and filters given")
  seeds = sorted({r["seed"] for r in recs})
  print(f"AUC (%), mean ± std over normal classes and seeds {seeds}\n")
  print(uda_train.table(recs, row="row"))
  print(summary(recs))
  if args.paired:
    print(paired(recs, args.paired))
  if args.plot:
    plot(recs, args.plot, args.xlabel)
    print(f"figure: {args.plot}")


if __name__ == "__main__":
  main()
