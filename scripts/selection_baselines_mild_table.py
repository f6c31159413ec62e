"""The table of docs/results.md "At severities 1 and 3": baselines vs roda under adapt.select=lowest,
severities 1 and 3, seeds 0-2, from the workdirs of scripts/selection_baselines_mild.sh and the
probe (runs/s32/adhalf*, RoDA's records). Usage: python scripts/selection_baselines_mild_table.py [image_auroc|pixel_auroc|aupro]
"""
import json, os, collections, sys, numpy as np
SH = ["gaussian_noise", "defocus_blur", "brightness", "contrast"]
METHODS = ["none", "bn_stats", "sinkhorn", "hungarian", "moment", "kl", "roda"]
metric = sys.argv[1] if len(sys.argv) > 1 else "image_auroc"
def load(path):
  return json.load(open(path)) if os.path.exists(path) else []
rows = []
for ds in ["bottle", "tire", "elpv"]:
  recs = [r for r in load(f"runs/s35/selbase13/{ds}/results.json") if r.get(metric) is not None]
  old = load(f"runs/s32/adhalf/{ds}/results.json") + load(f"runs/s32/adhalf3/{ds}/results.json")
  old = [r for r in old if r.get(metric) is not None]
  recs += [r for r in old if r["method"] == "roda" and r["severity"] in (1, 3)]
  none_new = {(r["category"], r["shift"], r["severity"], r["seed"]): r[metric] for r in recs if r["method"] == "none"}
  none_old = {(r["category"], r["shift"], r["severity"], r["seed"]): r[metric] for r in old if r["method"] == "none"}
  both = [k for k in none_new if k in none_old]
  mism = [k for k in both if abs(none_new[k] - none_old[k]) > 1e-9]
  v = collections.defaultdict(list)
  for r in recs:
    v[(r["category"], r["severity"], r["method"], r["shift"])].append((r["seed"], r[metric]))
  for cat in sorted({r["category"] for r in recs}):
    for sev in (1, 3):
      cell = {}
      for m in METHODS:
        if all({s for s, _ in v[(cat, sev, m, sh)]} >= {0, 1, 2} for sh in SH):
          cell[m] = {sh: np.mean([a for s, a in v[(cat, sev, m, sh)] if s in (0, 1, 2)]) for sh in SH}
      if "none" not in cell: continue
      n = cell["none"]
      out = {m: (np.mean(list(c.values())) - np.mean(list(n.values())),
                 sum(c[sh] < n[sh] - 1 for sh in SH)) for m, c in cell.items() if m != "none"}
      rows.append((ds, cat, sev, np.mean(list(n.values())), out))
  print(f"{ds}: none records checked against runs/s32: {len(both)}, mismatches {len(mism)}")
print(f"\n{metric}\n| set | severity | none | " + " | ".join(METHODS[1:]) + " |")
print("|---|---|---|" + "---|" * (len(METHODS) - 1))
for ds, cat, sev, nm, out in rows:
  best = max(out[m][0] for m in out)
  cells = [(f"**{out[m][0]:+.2f}**" if round(out[m][0], 2) == round(best, 2) else f"{out[m][0]:+.2f}") + f" ({out[m][1]})"
           if m in out else "—" for m in METHODS[1:]]
  print(f"| {ds if ds != 'elpv' else 'ELPV ' + cat} | {sev} | {nm:.2f} | " + " | ".join(cells) + " |")
full = [r for r in rows if all(m in r[4] for m in METHODS[1:])]
print(f"| mean of the {len(full)} rows | | | " + " | ".join(f"{np.mean([r[4][m][0] for r in full]):+.2f}" for m in METHODS[1:]) + " |")
print(f"| shifts > 1 below none, of {4 * len(full)} | | | " + " | ".join(str(sum(r[4][m][1] for r in full)) for m in METHODS[1:]) + " |")
