"""Classes and probabilities of points: `python scripts/predict.py --ckpt PATH --input in.csv --output out.csv`
(`--output -`: to stdout)."""

import sys

from mlnet_lightning.commands import predict

if __name__ == "__main__":
    sys.exit(predict())
