"""UDA for one-class anomaly detection (Deep SVDD + dominant cluster + alignment).

  python -m experiments.uda [--config configs/pacs.py] [--config.key=value ...] [--workdir DIR]
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import uda_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "configs", "pacs.py"), "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default runs/<config name>).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  uda_train.train_and_evaluate(_CONFIG.value, _WORKDIR.value or os.path.join("runs", name))


if __name__ == "__main__":
  app.run(main)
