#!/bin/bash
# The runs behind docs/results.md "A veto for the safeguard" (issues 11 and 15): none, bn_stats
# and roda with the defaults on the four 2D dev datasets (3 seeds) and roda on the 3D dev sets
# (seed 0), every record holding every safeguard criterion; then the replay of the rules.
# Runs resume by record identity. About 75 min on 2 CPU cores (ELPV 25, bottle 10, tire 15,
# 3D 25). The 3D dev sets: python -m experiments.make_pointclouds --meshes
# ../shared/data/pointclouds/meshes --out /tmp/pcdev2 --depth 0.08 --good 40 --defective 40
# The confirmation on fresh seeds (docs/results.md, "How far a better chooser could go"):
#   bash scripts/safeguard_runs.sh runs/sg35 - 3,4,5      (3D root "-": 2D only; ~25 min)
#   bash scripts/safeguard_runs.sh [runs/sg] [3D root] [seeds]
set -e
R=${1:-runs/sg}
PC=${2:-/tmp/pcdev2}
SEEDS=${3:-0,1,2}
S=clean,gaussian_noise,defocus_blur,brightness,contrast
M=none,bn_stats,roda
python -m experiments.roda --config configs/mvtec.py --config.shift.corruptions=$S \
  --config.shift.seeds=$SEEDS --config.adapt.methods=$M --workdir $R/bottle
python -m experiments.roda --config configs/mvtec.py --config.data.name=mvtec3d \
  --config.data.root=../shared/data/mvtec_3d --config.data.categories=tire \
  --config.shift.corruptions=$S --config.shift.seeds=$SEEDS --config.adapt.methods=$M --workdir $R/tire
python -m experiments.roda --config configs/elpv.py --config.shift.adapt_fraction=0.2 \
  --config.data.max_test_normal=50 --config.data.max_test_anomalous=50 --config.shift.corruptions=$S \
  --config.shift.seeds=$SEEDS --config.adapt.methods=$M --workdir $R/elpv
if [ "$PC" != "-" ]; then
  python -m experiments.roda --config configs/pointcloud.py --config.data.root=$PC \
    --config.shift.seeds=0 --config.adapt.methods=none,roda --workdir $R/pc
fi
python scripts/safeguard_criteria.py $R/*/results.json --by dataset+method
python scripts/safeguard_criteria.py $R/*/results.json --select
python scripts/safeguard_criteria.py $R/tire/results.json $(ls $R/pc/results.json 2>/dev/null) \
  --metric pixel_auroc --by dataset+method
