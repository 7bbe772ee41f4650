"""Train the tutorial's networks: `python scripts/train.py --help` lists every option."""

import sys

from mlnet_lightning.cli import main

if __name__ == "__main__":
    sys.exit(main())
