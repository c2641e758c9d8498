"""``python -m engine.gpucheck``: see ``engine.cli.gpucheck``."""

import sys

from engine.cli.gpucheck import main

if __name__ == "__main__":
    sys.exit(main())
