"""Where the ``better`` verbs write: results on stdout (:data:`out`), messages and progress on stderr
(:data:`err`), and the one factory of progress bars."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

#: Messages, tables meant for people, progress: standard error.
err = Console(stderr=True)
#: Results: standard output.
out = Console()


def progress_bars(unit: str = "bytes", transient: bool = False) -> Progress:
    """Progress bars on stderr, hidden when stderr is not a terminal (a script sees none).

    Parameters
    ----------
    unit
        What a bar counts: ``"bytes"`` shows sizes and speed; any other unit shows
        ``COMPLETED/TOTAL UNIT``.
    transient
        Whether the bars vanish when done.

    Returns
    -------
    rich.progress.Progress
        The bars, to use as a context manager.
    """
    counts: tuple[ProgressColumn, ...] = (
        (DownloadColumn(), TransferSpeedColumn())
        if unit == "bytes"
        else (TextColumn(f"{{task.completed}}/{{task.total}} {unit}"),)
    )
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        console=err,
        transient=transient,
        disable=not err.is_terminal,
    )
