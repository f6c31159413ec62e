"""The table of docs/results.md "The selection's share": roda under adapt.select=lowest at each
swept adapt.select_share against none, severities 1, 3 and 5, the seeds every share has, from the workdirs of
scripts/select_share_sweep.sh (runs/s37/share/<share>/<set>). For each (set, severity): the mean
over the four shifts of (roda - none) image AUROC, the shifts more than a point below none, and the
kept adaptation images' normal count (labels read back through the seeded split; diagnostic only,
the selection never sees labels). none is read from whichever share's workdir holds it (it does
not depend on the share). Usage: python scripts/select_share_table.py [ROOT]
"""
import collections, json, os, sys
import ml_collections, numpy as np
from experiments.train import target_split
from rodajax import data

ROOT = sys.argv[1] if len(sys.argv) > 1 else "runs/s37/share"
SH = ["gaussian_noise", "defocus_blur", "brightness", "contrast"]
shares = sorted(d for d in os.listdir(ROOT) if d != "banks")
labels = {}


def labels_of(wd, ds_name, cat):
  """Test labels and adaptation fraction of a set, loaded once (every share has the same data)."""
  if (ds_name, cat) not in labels:
    cfg = ml_collections.ConfigDict(json.load(open(os.path.join(wd, "config.json"))))
    ds = data.load(cfg.data, cat, seed=cfg.seed)
    labels[ds_name, cat] = (np.asarray(ds.test.labels), float(cfg.shift.adapt_fraction))
  return labels[ds_name, cat]


rows = collections.defaultdict(dict)
harm_rows = []
summary = collections.defaultdict(list)
for share in shares:
  for ds_name in sorted(os.listdir(os.path.join(ROOT, share))):
    wd = os.path.join(ROOT, share, ds_name)
    recs = json.load(open(os.path.join(wd, "results.json"))) if os.path.exists(os.path.join(wd, "results.json")) else []
    for r in recs:
      key = (ds_name, r["category"], r["severity"])
      rows[key].setdefault(r["method"] if r["method"] == "none" else share, {})[r["shift"], r["seed"]] = r
print("| set | severity | seeds | none | " + " | ".join(f"share {s}" for s in shares) + " |")
print("|---|---|---|---|" + "---|" * len(shares))
for key in sorted(rows, key=lambda k: (k[0] != "bottle", k[0] != "tire", k[1], k[2])):
  cell = rows[key]
  if "none" not in cell:
    continue
  none = cell["none"]
  SEEDS = sorted(s for s in {s for _, s in none} if all((sh, s) in none for sh in SH))
  if not SEEDS:
    continue
  out = []
  for share in shares:
    got = cell.get(share, {})
    if not all((sh, s) in got and (sh, s) in none for sh in SH for s in SEEDS):
      out.append("—"); continue
    d = {sh: np.mean([got[sh, s]["image_auroc"] - none[sh, s]["image_auroc"] for s in SEEDS]) for sh in SH}
    for sh in SH:
      harm_rows.append((key, sh, share, d[sh]))
    harmed = sum(v < -1 for v in d.values())
    kept = normal = 0
    for (sh, s), r in got.items():
      if s not in SEEDS or not r.get("select"): continue
      lab, frac = labels_of(os.path.join(ROOT, share, key[0]), key[0], key[1])
      a, _ = target_split(len(lab), frac, s)
      idx = np.asarray(r["select"]["indices"])
      kept += len(idx); normal += int((lab[a][idx] == 0).sum())
    n_sel = sum(1 for (sh, s), r in got.items() if s in SEEDS and r.get("select"))
    out.append(f"{np.mean(list(d.values())):+.2f} ({harmed}; {normal / max(n_sel, 1):.1f}/{kept / max(n_sel, 1):.1f})")
    summary[share].append((key, len(SEEDS), np.mean(list(d.values())), harmed))
  nm = np.mean([none[sh, s]["image_auroc"] for sh in SH for s in SEEDS])
  name = key[0] if key[0] != "elpv" else f"ELPV {key[1]}"
  print(f"| {name} | {key[2]} | {len(SEEDS)} | {nm:.2f} | " + " | ".join(out) + " |")
# Means over the rows every share has, by the seeds the rows have (3 or 1).
for n in sorted({n for v in summary.values() for _, n, _, _ in v}, reverse=True):
  common = set.intersection(*[{k for k, m, _, _ in summary[s] if m == n} for s in shares])
  if not common:
    continue
  got = {s: [(v, h) for k, m, v, h in summary[s] if m == n and k in common] for s in shares}
  print(f"| mean of the {len(common)} rows with {n} seed(s) | | | | " + " | ".join(
      f"{np.mean([v for v, _ in got[s]]):+.2f} ({sum(h for _, h in got[s])} of {4 * len(common)})" for s in shares) + " |")
print("columns: set, severity, seeds (n), none (mean of shifts), " + ", ".join(f"share {s}" for s in shares) + "; cell = mean of shifts - none (shifts > 1 below none; normal/kept images per adapted split)")

# Every (set, severity, shift) more than a point below none under some share, each share's change.
cells = collections.defaultdict(dict)
for key, sh, share, v in harm_rows:
  cells[key, sh][share] = v
print("\n| set | severity | shift | " + " | ".join(f"share {s}" for s in shares) + " |")
print("|---|---|---|" + "---|" * len(shares))
for (key, sh), by in cells.items():
  if min(by.values()) < -1:
    name = key[0] if key[0] != "elpv" else f"ELPV {key[1]}"
    print(f"| {name} | {key[2]} | {sh} | " + " | ".join(f"{by[s]:+.1f}" if s in by else "—" for s in shares) + " |")
