"""``python -m backends.runner PLAN.json``: the runner from a source checkout (transports ship runner.pyz)."""

import sys

from .main import main

sys.exit(main(sys.argv))
