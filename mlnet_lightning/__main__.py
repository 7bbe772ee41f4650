"""`python -m mlnet_lightning [options]`: train.py (`--help` lists the options)."""

import sys

from mlnet_lightning.commands import train

sys.exit(train())
