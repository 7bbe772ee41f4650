"""Loss and accuracy of a trained network: `python scripts/evaluate.py --ckpt PATH [--data points.csv]`."""

import sys

from mlnet_lightning.commands import evaluate

if __name__ == "__main__":
    sys.exit(evaluate())
