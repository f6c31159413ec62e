#!/bin/bash
# adapt.select_share swept (issue 11; docs/results.md "The selection's share"): none and roda
# (the shipped default: routed statistics, select=lowest, safeguard) at severities 1, 3 and 5,
# seeds 0-2, the four shifts, for each share in $SHARES and each set in $SETS. Banks are fitted
# once per set under $R/banks and shared by every share. none does not depend on the share, so
# METHODS=roda skips it for every share after the first. Runs resume by record identity.
#   SHARES=0.25 SETS=elpv bash scripts/select_share_sweep.sh
#   METHODS=roda SHARES=0.75 SETS=elpv bash scripts/select_share_sweep.sh
set -e
. .venv/bin/activate
. scripts/dev_sets.sh
R=${R:-runs/s37/share}; S=gaussian_noise,defocus_blur,brightness,contrast
for SHARE in ${SHARES:-0.25 0.75}; do
C="--config.shift.corruptions=$S --config.shift.severities=${SEVS:-1,3,5} --config.shift.seeds=${SEEDS:-0,1,2} --config.adapt.methods=${METHODS:-none,roda} --config.adapt.select_share=$SHARE"
for SET in ${SETS:-elpv bottle tire}; do
echo "== share $SHARE $SET $(date +%T)"
dev_set $SET $R/$SHARE/$SET $R/banks/$SET $C
done
done
echo "== done $(date +%T)"
