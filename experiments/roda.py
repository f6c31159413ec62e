"""Main job: PatchCore (+ shifts and adaptation) over the categories of a config.

  python -m experiments.roda [--config configs/X.py] [--config.key=value ...] [--workdir DIR]
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "configs", "elpv.py"), "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default runs/<config name>).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  workdir = _WORKDIR.value or os.path.join("runs", name)
  train.train_and_evaluate(_CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main)
