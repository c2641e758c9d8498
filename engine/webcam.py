"""``python -m engine.webcam``: see ``engine.cli.webcam``."""

import sys

from engine.cli.webcam import main

if __name__ == "__main__":
    sys.exit(main())
