"""``python -m engine.batch``: see ``engine.cli.batch``."""

import sys

from engine.cli.batch import main

if __name__ == "__main__":
    sys.exit(main())
