"""``python -m engine.distill``: see ``engine.cli.distill``."""

import sys

from engine.cli.distill import main

sys.exit(main())
