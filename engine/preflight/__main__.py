"""``python -m engine.preflight build RESULTS...``: add bench results to the figures table."""

import sys

from engine.preflight.build import main

sys.exit(main())
