"""UDA for one-class anomaly detection (Deep SVDD + dominant cluster + alignment).

  python -m experiments.uda [--config configs/pacs.py] [--config.key=value ...] [--workdir DIR]
"""
import os

from experiments import cli

FLAGS = [cli.Flag("workdir", "output folder (default runs/<config name>)")]


def main(argv):
  args = cli.parse(argv, __doc__, FLAGS, os.path.join(cli.CONFIGS, "pacs.py"))
  cli.quiet_logs()
  from experiments import uda_train
  name = os.path.splitext(os.path.basename(args.config_file))[0]
  uda_train.train_and_evaluate(args.config, args.flags["workdir"] or os.path.join("runs", name))


if __name__ == "__main__":
  cli.run(main)
