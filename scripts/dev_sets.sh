# Sourced by the sweep scripts: `dev_set SET WORKDIR BANK_DIR ARGS...` runs experiments.roda on
# one dev set (bottle, tire, elpv = ELPV mono and poly at the 20 % adaptation split and 50 + 50
# test images) with ARGS appended.
dev_set() {
  local set=$1 wd=$2 banks=$3; shift 3
  case $set in
  bottle) python -m experiments.roda --config configs/mvtec.py "$@" --workdir $wd --config.bank_dir=$banks ;;
  elpv) python -m experiments.roda --config configs/elpv.py --config.shift.adapt_fraction=0.2 --config.data.max_test_normal=50 --config.data.max_test_anomalous=50 "$@" --workdir $wd --config.bank_dir=$banks ;;
  tire) python -m experiments.roda --config configs/mvtec.py --config.data.name=mvtec3d --config.data.root=../shared/data/mvtec_3d --config.data.categories=tire "$@" --workdir $wd --config.bank_dir=$banks ;;
  *) echo "unknown dev set $set (bottle, tire or elpv)" >&2; return 2 ;;
  esac
}
