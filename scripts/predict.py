"""Classes and probabilities of points: `python scripts/predict.py --ckpt PATH --input in.csv --output out.csv`
(`--output -`: to stdout)."""

import sys

from mlnet_lightning.signals import run_command

if __name__ == "__main__":
    sys.exit(run_command("predict.py", "mlnet_lightning.inference", "predict_main"))
