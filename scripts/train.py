"""Train the tutorial's networks: `python scripts/train.py --help` lists every option."""

import sys

from mlnet_lightning.signals import run_command

if __name__ == "__main__":
    sys.exit(run_command("train.py", "mlnet_lightning.cli"))
