"""Benchmark: `python -m experiments.predict` throughput and peak memory against folder size.

  python -m benchmarks.predict [--sizes 100,400,1600] [--repeats 3] [--model DIR]

Fits the default ELPV mono model (EfficientNet-Lite0, 256 -> 224, 200 training
cells, 10% coreset) unless --model is given, then scores folders of N real ELPV
cells (symlinks into the installed package) with the predict command as a
separate process, --maps overlay (the default) and --maps none. Reported per
(N, maps): the median over repeats of the whole command's wall time, the
throughput of its scoring loop (summary.json, first batch's compilation
included), the marginal rate between the two largest N (compilation and start-up
cancel out), and the peak resident memory of the process (getrusage of the
child). Memory flat in N is the claim under test.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(cmd):
  t = time.perf_counter()
  p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  _, status, usage = os.wait4(p.pid, 0)
  wall = time.perf_counter() - t
  err = p.stderr.read().decode()
  p.stderr.close()
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(err[-2000:])
  return wall, usage.ru_maxrss / 1024   # MiB (Linux: KiB)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="100,400,1600")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--model", default="")
  a = ap.parse_args()
  import elpv_dataset
  cells = sorted(glob.glob(os.path.join(os.path.dirname(elpv_dataset.__file__), "data", "images",
                                        "*.png")))
  tmp = tempfile.mkdtemp(prefix="predict-bench-")
  model = a.model or os.path.join(tmp, "model")
  if not a.model:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "experiments.fit", "--config", "configs/elpv.py",
                    "--config.data.categories=mono", "--model", model], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"fit: {time.perf_counter() - t:.0f} s")
  bank = json.load(open(os.path.join(model, "model.json")))["bank"]
  sizes = [int(s) for s in a.sizes.split(",")]
  rows = []
  for maps in ("overlay", "none"):
    per = {}
    for n in sizes:
      folder = os.path.join(tmp, f"imgs{n}")
      if not os.path.isdir(folder):
        os.makedirs(folder)
        for i in range(n):
          os.symlink(cells[i % len(cells)], os.path.join(folder, f"{i:05d}.png"))
      walls, rss, ips = [], [], []
      for r in range(a.repeats):
        out = os.path.join(tmp, f"out{n}_{maps}_{r}")
        w, m = run_child([sys.executable, "-m", "experiments.predict", "--model", model,
                          "--images", folder, "--out", out, "--maps", maps])
        s = json.load(open(os.path.join(out, "summary.json")))
        walls.append(w)
        rss.append(m)
        ips.append(s["images_per_s"])
      per[n] = (float(np.median(walls)), float(np.median(ips)), float(np.median(rss)))
      rows.append((n, maps, *per[n]))
      print(f"N={n} maps={maps}: wall {per[n][0]:.1f} s, loop {per[n][1]:.1f} img/s, "
            f"peak RSS {per[n][2]:.0f} MiB", flush=True)
    if len(sizes) >= 2:
      n1, n2 = sizes[-2], sizes[-1]
      marginal = (n2 - n1) / (per[n2][0] - per[n1][0])
      rows.append((f"{n1}->{n2}", maps, None, marginal, per[n2][2] - per[n1][2]))
  print(f"\nbank {bank['size']} x {bank['dim']}; median of {a.repeats} runs; 224 px; "
        f"{os.cpu_count()} CPU cores\n")
  print("| images | maps | wall s (whole command) | img/s | peak RSS MiB |")
  print("|---|---|---|---|---|")
  for n, maps, w, ips, m in rows:
    if w is None:
      print(f"| marginal {n} | {maps} | – | {ips:.1f} | {m:+.0f} (difference) |")
    else:
      print(f"| {n} | {maps} | {w:.1f} | {ips:.1f} | {m:.0f} |")


if __name__ == "__main__":
  main()
