"""Loss and accuracy of a trained network: `python scripts/evaluate.py --ckpt PATH [--data points.csv]`."""

import sys

from mlnet_lightning.signals import run_command

if __name__ == "__main__":
    sys.exit(run_command("evaluate.py", "mlnet_lightning.inference", "evaluate_main"))
