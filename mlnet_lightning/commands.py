"""The project's commands: scripts/<name>.py, the installed `mlnet-<name>` and `python -m mlnet_lightning` (train)
all run these, with the same options and exit statuses. Each imports its module only once the stop signals are
taken (mlnet_lightning.signals.run_command): torch and Lightning take seconds to import."""

from mlnet_lightning.signals import run_command


def train() -> int:
    return run_command("train.py", "mlnet_lightning.cli")


def compare() -> int:
    return run_command("compare.py", "mlnet_lightning.compare")


def evaluate() -> int:
    return run_command("evaluate.py", "mlnet_lightning.inference", "evaluate_main")


def predict() -> int:
    return run_command("predict.py", "mlnet_lightning.inference", "predict_main")


def export() -> int:
    return run_command("export.py", "mlnet_lightning.export")
