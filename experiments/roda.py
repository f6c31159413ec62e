"""Main job: PatchCore (+ shifts and adaptation) over the categories of a config.

  python -m experiments.roda [--config configs/X.py] [--config.key=value ...] [--workdir DIR]

Writes DIR/results.json and DIR/results.md (default DIR: runs/<config name>);
a rerun reuses the records and memory banks already there.
"""
import os

from experiments import cli

FLAGS = [cli.Flag("workdir", "output folder (default runs/<config name>)")]


def main(argv):
  args = cli.parse(argv, __doc__, FLAGS, os.path.join(cli.CONFIGS, "elpv.py"))
  cli.quiet_logs()
  from experiments import train   # after parsing: --help needs no JAX
  name = os.path.splitext(os.path.basename(args.config_file))[0]
  train.train_and_evaluate(args.config, args.flags["workdir"] or os.path.join("runs", name))


if __name__ == "__main__":
  cli.run(main)
