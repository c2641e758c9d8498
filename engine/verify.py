"""``python -m engine.verify``: see ``engine.cli.verify``."""

import sys

from engine.cli.verify import main

if __name__ == "__main__":
    sys.exit(main())
