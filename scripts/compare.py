"""Train several configs and print one table: `python scripts/compare.py configs/*.yaml --max_epochs 500`."""

import sys

from mlnet_lightning.commands import compare

if __name__ == "__main__":
    sys.exit(compare())
