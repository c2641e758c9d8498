"""``python -m engine.eval``: see ``engine.cli.eval``."""

import sys

from engine.cli.eval import main

sys.exit(main())
