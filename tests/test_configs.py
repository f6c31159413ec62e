"""The config families (`get_config(arg)`) and the fixed files agree; tuples parse from the CLI."""
import pytest

from experiments import cli

PAIRS = [("configs/elpv.py", "configs/roda.py:elpv"),
         ("configs/mvtec.py", "configs/roda.py:bottle"),
         ("configs/roda_baselines.py", "configs/roda.py:bottle,baselines"),
         ("configs/roda_severity.py", "configs/roda.py:bottle,severity"),
         ("configs/roda_fraction.py", "configs/roda.py:bottle,fraction"),
         ("configs/roda_ablation.py", "configs/roda.py:bottle,ablation"),
         ("configs/pacs.py", "configs/uda.py:pacs")]


@pytest.mark.parametrize("fixed,family", PAIRS)
def test_fixed_configs_are_points_of_their_family(fixed, family):
  assert cli.load_config(fixed).to_dict() == cli.load_config(family).to_dict()


def test_family_arguments_and_mistakes():
  c = cli.load_config("configs/roda.py:tire,severity")
  assert c.data.name == "mvtec3d" and c.data.categories == ("tire",)
  assert c.shift.severities == (1, 2, 3, 4, 5) and c.adapt.methods == ("none", "bn_stats", "roda")
  assert cli.load_config("configs/roda.py:bottle,clean").adapt.methods == ("none",)
  with pytest.raises(ValueError, match="expected <dataset>"):
    cli.load_config("configs/roda.py:cable")
  with pytest.raises(ValueError, match="pacs or elpv"):
    cli.load_config("configs/uda.py:office")


def test_tuple_overrides_keep_their_item_type():
  c = cli.load_config("configs/roda.py:bottle")
  cli.apply_overrides(c, {"shift.severities": "1,3", "shift.seeds": "0,1",
                          "adapt.methods": "none,kl", "shift.adapt_fractions": "0.2,1.0"})
  assert c.shift.severities == (1, 3) and c.adapt.methods == ("none", "kl")
  assert c.shift.seeds == ("0", "1")          # an empty default: items stay strings, parsed later
  assert c.shift.adapt_fractions == ("0.2", "1.0")
  with pytest.raises(cli.UserError, match="comma-separated integers"):
    cli.apply_overrides(c, {"shift.severities": "1,x"})
