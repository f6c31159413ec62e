#!/bin/bash
# Baselines under adapt.select=lowest (the shipped default) at severities 1 and 3 (Session 35;
# docs/results.md "At severities 1 and 3"), seeds 0-2, the banks of runs/s32/banks. Sets: $SETS.
set -e
. .venv/bin/activate
R=${R:-runs/s35/selbase13}; S=gaussian_noise,defocus_blur,brightness,contrast
M=${M:-none,bn_stats,sinkhorn,hungarian,moment,kl}
C="--config.shift.corruptions=$S --config.shift.severities=1,3 --config.shift.seeds=0,1,2 --config.adapt.methods=$M"
for SET in ${SETS:-bottle elpv tire}; do
echo "== $SET $(date +%T)"
case $SET in
bottle) python -m experiments.roda --config configs/mvtec.py $C --workdir $R/bottle --config.bank_dir=runs/s32/banks/bottle ;;
elpv) python -m experiments.roda --config configs/elpv.py --config.shift.adapt_fraction=0.2 --config.data.max_test_normal=50 --config.data.max_test_anomalous=50 $C --workdir $R/elpv --config.bank_dir=runs/s32/banks/elpv ;;
tire) python -m experiments.roda --config configs/mvtec.py --config.data.name=mvtec3d --config.data.root=../shared/data/mvtec_3d --config.data.categories=tire $C --workdir $R/tire --config.bank_dir=runs/s32/banks/tire ;;
esac
done
echo "== done $(date +%T)"
