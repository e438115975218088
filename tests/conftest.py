"""Test-suite set-up shared by every test module."""

from __future__ import annotations

import sys
from pathlib import Path

# The distributed tests spawn processes that import test modules and the shared launcher
# (tests/_dist.py) by name; spawned children inherit sys.path, so one insertion serves all.
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
