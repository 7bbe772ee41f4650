"""Classes and probabilities of points: `python scripts/predict.py --ckpt PATH --input in.csv --output out.csv`."""

import sys

from mlnet_lightning.inference import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
