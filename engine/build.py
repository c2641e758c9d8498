"""``python -m engine.build``: see ``engine.cli.build``."""

import sys

from engine.cli.build import main

if __name__ == "__main__":
    sys.exit(main())
