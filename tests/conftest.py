"""Shared test helpers: paths to the optional shared data, fixtures."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SHARED = os.environ.get("RODAJAX_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def shared_path(*parts):
  """Path under ../shared/data, or skip the test with the reason."""
  path = os.path.join(SHARED, *parts)
  if not os.path.exists(path):
    pytest.skip(f"shared data {path} is absent (only developers' machines have ../shared/data; "
                "set RODAJAX_SHARED_DATA to point elsewhere)")
  return path
