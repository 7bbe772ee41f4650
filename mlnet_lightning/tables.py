"""The tables the command lines print."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlnet_lightning.reference import TUTORIAL, TUTORIAL_WITH_LOGITS

# epochs: those trained, so that a run stopped early (EarlyStopping, --max_time, a signal) shows it.
SUMMARY_COLUMNS = ("model", "initial_loss", "final_loss", "train_acc", "val_acc", "epochs", "fit_seconds", "device")


def format_table(
    summaries: list[dict[str, Any]],
    logits: bool = False,
    columns: tuple[str, ...] = SUMMARY_COLUMNS,
    tutorial_rows: bool = True,
) -> str:
    """Our numbers, with the tutorial's beneath each network it has numbers for, trained with `logits` or
    not (unless tutorial_rows is False)."""
    references = TUTORIAL_WITH_LOGITS if logits else TUTORIAL
    rows = [columns]
    for summary in summaries:
        rows.append(tuple(_cell(summary.get(c), c) for c in columns))
        reference = references.get(summary["model"])
        if tutorial_rows and reference is not None and summary["epochs"] == 10_000:
            reference = {**reference, columns[0]: "  tutorial", "epochs": 10_000}
            rows.append(tuple(_cell(reference.get(c), c) for c in columns))
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _cell(value: Any, column: str) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if column == "fit_seconds" else f"{value:.6f}" if "loss" in column else f"{value:.4f}"
    return "" if value is None else str(value)


def format_copies_table(summaries: Sequence[dict[str, Any]]) -> str:
    """One line per network and learning rate: the spread of the final validation accuracy over the seeds."""
    columns = ("model", "lr", "seeds", "final_loss", "val_acc_mean", "std", "min", "median", "max", "best_seed",
               "worst_seed")  # fmt: skip
    rows = [columns]
    for summary in summaries:
        for entry in summary["distribution"]:
            acc, loss = entry["val_acc"], entry["final_loss"]
            numbers = [f"{acc[k]:.4f}" for k in ("mean", "std", "min", "median", "max")]
            rows.append((summary["model"], f"{entry['lr']:g}", str(entry["copies"]), f"{loss['mean']:.6f}", *numbers,
                         str(acc["best_seed"]), str(acc["worst_seed"])))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
