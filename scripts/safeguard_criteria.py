"""Which label-free safeguard criterion would have kept the better model? (issues 11 and 15)

  python scripts/safeguard_criteria.py runs/a/results.json runs/b/results.json ...

Every adapted record of a run with the safeguard on carries its held-out
criteria for the source model and for each candidate (`safeguard.source`,
`safeguard.candidates`, `safeguard.other_criterion`) and its AUROC with and
without the guard (`image_auroc`, `unguarded`). For each criterion this asks
the binary question the guard faces at the end of a pass: keep the source
model or the last step's? It adapts when the last step's value is below the
source's by the relative margin (`--margin`, as `tta.decide`), and scores
that choice with the AUROC of the chosen model (`none`'s record of the same
split for the source, `unguarded` for the last step). Printed per criterion
(markdown): the mean chosen AUROC on clean and shifted records, how often
the choice is more than 1 point below none, how often its direction agrees
with the AUROC change, and the oracle (the better of the two, per record).

  python scripts/safeguard_criteria.py --select runs/a/results.json ...

asks the wider question: with several adapted candidates per split (the end of
each method's pass, e.g. bn_stats and roda, plus the source model), which rule
would pick well? Printed: the mean over shifts per dataset of the chosen AUROC
under each rule, the oracle (the best candidate per split), and a shift gate that
adapts only when the source model's held-out transport cost is at least
`--gate` times its value on the same seed's unshifted images (in this replay
the clean record of the same split; a deployment would need clean held-out
normals, as the tool's calibration split has).
"""
import argparse
import collections
import json
import statistics

CRITERIA = ("transport", "nn", "synthetic", "synthetic_gain")
# Rules of two criteria: adapt when the first improves by the margin and the second
# does not get worse (a veto).
VETOES = (("transport", "synthetic"), ("transport", "synthetic_gain"))


def load(files):
  """Records of every file; `PATH@SUFFIX` appends SUFFIX to the adapted methods' names of
  that file (e.g. a roda run with other settings next to the default's: `...@_target_stats`)."""
  recs = []
  for f in files:
    path, _, suffix = f.partition("@")
    data = json.load(open(path))
    for r in data["records"] if isinstance(data, dict) else data:
      recs.append({**r, "method": r["method"] + suffix} if suffix and r["method"] != "none" else r)
  return recs


def key(r):
  return (r["dataset"], r["category"], r["shift"], r["severity"], r["seed"], r["adapt_fraction"])


def rows(recs, metric):
  """(dataset/category, shift, method, none, unguarded, {criterion: (source, last)}) per record."""
  none = {key(r): r[metric] for r in recs if r["method"] == "none"}
  out = []
  for r in recs:
    g = r.get("safeguard")
    if not g or key(r) not in none or r[metric] is None:
      continue
    last = (r.get("unguarded") or {}).get(metric)
    if last is None:
      continue
    crit = {g["criterion"]: (g["source"], g["candidates"][-1])}
    for name, v in g.get("other_criterion", {}).items():
      crit[name] = (v[0], v[-1])
    crit["as run"] = r[metric]
    out.append((f"{r['dataset']}/{r['category']}", r["shift"], r["method"], none[key(r)], last,
                crit))
  return out


def adapts(source, last, margin):
  return last < source - margin * abs(source)


def vetoed(crit, first, second, margin):
  """Adapt when `first` improves by the margin and `second` does not get worse (the shipped
  guard is ("transport", "synthetic_gain"))."""
  return adapts(*crit[first], margin) and crit[second][1] <= crit[second][0]


def table(rs, margin):
  lines = ["| criterion | records | clean: mean chosen (none) | shifted: mean chosen (none / "
           "unguarded / oracle) | chosen > 1 below none (clean, shifted) | direction agrees |",
           "|---|---|---|---|---|---|"]
  names = ("as run", "never adapt", "always adapt") + CRITERIA + tuple(f"{a} + {b} veto" for a, b in VETOES)
  for name in names:
    clean, shifted, harm, agree, n = [], [], collections.Counter(), 0, 0
    base = {"clean": [], "shift": [], "ung": [], "oracle": []}
    for _, shift, _, none, last, crit in rs:
      if name == "as run":   # the record's own guarded result (its rule and candidates)
        a = None
      elif name == "never adapt":
        a = False
      elif name == "always adapt":
        a = True
      elif name in crit:
        a = adapts(*crit[name], margin)
      elif name.endswith(" veto") and all(c in crit for c in name[:-5].split(" + ")):
        first, second = name[:-5].split(" + ")
        a = vetoed(crit, first, second, margin)
      else:
        continue
      chosen = crit["as run"] if a is None else (last if a else none)
      n += 1
      (clean if shift == "clean" else shifted).append(chosen)
      if shift == "clean":
        base["clean"].append(none)
      else:
        base["shift"].append(none)
        base["ung"].append(last)
        base["oracle"].append(max(none, last))
      if chosen < none - 1.0:
        harm["clean" if shift == "clean" else "shift"] += 1
      if a is not None and name not in ("never adapt", "always adapt") and abs(last - none) > 0.5:
        agree += a == (last > none)
    if not n:
      continue
    mean = lambda x: f"{statistics.mean(x):.2f}" if x else "-"
    n_dir = sum(1 for *_, none, last, c in rs if abs(last - none) > 0.5 and (
        name.split(" + ")[0].removesuffix(" veto") in c))
    n_dir = n_dir if name != "as run" else 0
    lines.append(
        f"| {name} | {n} | {mean(clean)} ({mean(base['clean'])}) | {mean(shifted)} "
        f"({mean(base['shift'])} / {mean(base['ung'])} / {mean(base['oracle'])}) | "
        f"{harm['clean']} of {len(clean)}, {harm['shift']} of {len(shifted)} | "
        + (f"{agree} of {n_dir} |" if name in crit or name.endswith("veto") else "- |"))
  return "\n".join(lines)


def candidates(recs, metric):
  """{split: {"none": auroc, method: (unguarded auroc, {criterion: (source, last)}, as run)}}."""
  out = collections.defaultdict(dict)
  for r in recs:
    k = (r["dataset"], r["category"], r["shift"], r["seed"])
    if r["method"] == "none":
      out[k]["none"] = r[metric]
      continue
    g, last = r.get("safeguard"), (r.get("unguarded") or {}).get(metric)
    if not g or last is None:
      continue
    crit = {g["criterion"]: (g["source"], g["candidates"][-1])}
    crit.update({n: (v[0], v[-1]) for n, v in g.get("other_criterion", {}).items()})
    out[k][r["method"]] = (last, crit, r[metric])
  return {k: v for k, v in out.items() if "none" in v and v["none"] is not None}


def pick(split, rule, margin):
  """(method, auroc) that `rule` keeps for one split; "none" is the source model."""
  methods = [m for m in split if m != "none"]
  if rule == "never adapt" or not methods:
    return "none", split["none"]
  if rule == "oracle":
    return max([("none", split["none"])] + [(m, split[m][0]) for m in methods],
               key=lambda c: c[1])
  if rule.startswith("only ") or rule.startswith("as run "):   # unguarded / the record's own guard
    m = rule.split(" ")[-1]
    if m not in split:
      return "none", split["none"]
    guarded = split[m][2]
    return ((m, split[m][0]) if rule.startswith("only ") else
            ("none" if guarded == split["none"] else m, guarded))
  source = {n: v[0] for n, v in split[methods[0]][1].items()}
  value = lambda m, n: source[n] if m == "none" else split[m][1][n][1]
  kind, *names = rule.split(" ")
  if kind == "default":  # default <method>: the shipped guard (transport, synthetic_gain veto) on one method
    m = names[0]
    if m in split and vetoed(split[m][1], "transport", "synthetic_gain", margin):
      return m, split[m][0]
    return "none", split["none"]
  if kind == "min":      # min <criterion>: the candidate with the lowest value
    eligible = ["none"] + methods
  elif kind == "guard":  # guard <criterion>: eligible by the default guard, then the lowest value
    eligible = ["none"] + [m for m in methods
                           if vetoed(split[m][1], "transport", "synthetic_gain", margin)]
  else:
    raise ValueError(rule)
  best = min(eligible, key=lambda m: value(m, names[0]))
  return best, (split["none"] if best == "none" else split[best][0])


def select_table(recs, metric, margin, gate):
  splits = candidates(recs, metric)
  ref = {}
  for k, s in splits.items():
    for m in s:
      if m != "none" and k[2] == "clean":
        ref[(k[0], k[1], k[3])] = s[m][1]["transport"][0]
  group = lambda k: k[0] if k[0] == "real3d" else f"{k[0]}/{k[1]}"
  groups = list(dict.fromkeys(group(k) for k in splits))
  methods = sorted({m for s in splits.values() for m in s if m != "none"})
  rules = (["never adapt", "oracle"] + [f"as run {m}" for m in methods]
           + [f"default {m}" for m in methods]
           + [f"only {m}" for m in methods]
           + ["min transport", "min synthetic_gain", "guard transport", "guard synthetic_gain"]
           + [f"gate {r}" for r in [f"only {m}" for m in methods]
              + ["min synthetic_gain", "guard synthetic_gain"]])
  lines = [f"| rule | {' | '.join(groups)} | mean | shifted > 1 below none | clean > 0.5 "
           "below none | kept (source / " + " / ".join(methods) + ") |",
           "|---|" + "---|" * (len(groups) + 4)]
  for rule in rules:
    per, harm, clean_harm, kept = collections.defaultdict(list), [0, 0], [0, 0], collections.Counter()
    for k, s in splits.items():
      inner = rule.removeprefix("gate ")
      shifted = (ref.get((k[0], k[1], k[3])) is not None and
                 [v for m, v in s.items() if m != "none"][0][1]["transport"][0]
                 >= gate * ref[(k[0], k[1], k[3])])
      m, a = (pick(s, inner, margin) if not rule.startswith("gate ") or shifted
              else ("none", s["none"]))
      kept[m] += 1
      if k[2] == "clean":
        clean_harm[0] += a < s["none"] - 0.5
        clean_harm[1] += 1
      else:
        per[group(k)].append(a)
        harm[0] += a < s["none"] - 1.0
        harm[1] += 1
    means = [statistics.mean(per[g]) for g in groups if per[g]]
    lines.append(f"| {rule} | " + " | ".join(f"{statistics.mean(per[g]):.2f}" if per[g] else "-"
                                             for g in groups)
                 + f" | {statistics.mean(means):.2f} | {harm[0]} of {harm[1]} | "
                 f"{clean_harm[0]} of {clean_harm[1]} | "
                 + " / ".join(str(kept[m]) for m in ["none"] + methods) + " |")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("files", nargs="+")
  ap.add_argument("--metric", default="image_auroc")
  ap.add_argument("--margin", type=float, default=0.01)
  ap.add_argument("--select", action="store_true",
                  help="choose among all adapted methods of a split (see the docstring)")
  ap.add_argument("--gate", type=float, default=1.15)
  ap.add_argument("--by", choices=("all", "dataset", "method", "dataset+method"), default="all")
  args = ap.parse_args()
  if args.select:
    print(f"\n#### {args.metric}: choosing among the source and every adapted method "
          f"(margin {args.margin}, gate {args.gate})\n")
    print(select_table(load(args.files), args.metric, args.margin, args.gate))
    return
  rs = rows(load(args.files), args.metric)
  groups = {"all": rs} if args.by == "all" else collections.defaultdict(list)
  if args.by != "all":
    for r in rs:
      groups[{"dataset": r[0], "method": r[2], "dataset+method": f"{r[0]}, {r[2]}"}[args.by]].append(r)
  for g, sub in groups.items():
    print(f"\n#### {args.metric}, {g} (margin {args.margin})\n")
    print(table(sub, args.margin))


if __name__ == "__main__":
  main()
