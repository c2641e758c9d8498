"""``python -m engine.train``: see ``engine.cli.train``."""

import sys

from engine.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
