"""Train several configs and print one table: `python scripts/compare.py configs/*.yaml --max_epochs 500`."""

import sys

from mlnet_lightning.signals import run_command

if __name__ == "__main__":
    sys.exit(run_command("compare.py", "mlnet_lightning.compare"))
