#!/bin/bash
# Baselines under adapt.select=lowest (the shipped default) at severities 1 and 3 (Session 35;
# docs/results.md "At severities 1 and 3"), seeds 0-2, the banks of runs/s32/banks. Sets: $SETS.
set -e
. .venv/bin/activate
. scripts/dev_sets.sh
R=${R:-runs/s35/selbase13}; S=gaussian_noise,defocus_blur,brightness,contrast
M=${M:-none,bn_stats,sinkhorn,hungarian,moment,kl}
C="--config.shift.corruptions=$S --config.shift.severities=1,3 --config.shift.seeds=0,1,2 --config.adapt.methods=$M"
for SET in ${SETS:-bottle elpv tire}; do
echo "== $SET $(date +%T)"
dev_set $SET $R/$SET runs/s32/banks/$SET $C
done
echo "== done $(date +%T)"
