"""``python -m torchtally.demo``: run the demo (see :mod:`torchtally.demo`)."""

from torchtally.demo._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
