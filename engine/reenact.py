"""``python -m engine.reenact``: see ``engine.cli.reenact``."""

import sys

from engine.cli.reenact import main

if __name__ == "__main__":
    sys.exit(main())
