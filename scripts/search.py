"""Search the tutorial's "what's next" with Optuna: `python scripts/search.py --help`; docs/search.md."""

import sys

from mlnet_lightning.signals import run_command

if __name__ == "__main__":
    sys.exit(run_command("search.py", "mlnet_lightning.search"))
