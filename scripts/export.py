"""A trained network as a file for other runtimes, checked against its checkpoint:
`python scripts/export.py --ckpt PATH --format onnx|torchscript --output FILE`."""

import sys

from mlnet_lightning.commands import export

if __name__ == "__main__":
    sys.exit(export())
