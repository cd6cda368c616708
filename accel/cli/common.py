"""What the command modules share: the parser classes, one-line errors, run lookup, small formatters."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accel.errors import UserError, one_line

if TYPE_CHECKING:
    from accel.runs import Run, RunInfo, RunStore

EXIT_INTERRUPTED = 130
STORE_HELP = "Run store folder. Default: $ACCEL_RUNS_DIR if set, else ./runs."


class CliError(UserError, ValueError):
    """Bad command-line input detected by the CLI itself."""


class Formatter(argparse.HelpFormatter):
    """Wraps descriptions line by line but keeps indented lines (examples) and blank lines as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if not line.strip() or line.startswith(" "):
                lines.append(indent + line)
            else:
                lines.append(
                    textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)
                )
        return "\n".join(lines)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def writable_output(path: str, flag: str, folder: bool = False) -> Path:
    """``path`` as an output file (or ``folder``) the command can write, checked before any work: its nearest
    existing folder takes a probe file (so a read-only place or ``/proc`` is refused at once); else a :class:`CliError`
    naming ``flag``. Nothing is created."""
    if not str(path).strip():
        raise CliError(f"{flag} is empty: name a {'folder' if folder else 'file'}")
    out = Path(path).expanduser()
    if out.exists() and out.is_dir() != folder:
        raise CliError(
            f"{flag} {path} is {'a file' if folder else 'a folder'}: name a {'folder' if folder else 'file'}"
        )
    place = out if out.is_dir() else out.parent
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        if not place.is_dir():
            raise NotADirectoryError(20, "not a folder", str(place))
        with tempfile.TemporaryFile(dir=place):
            pass
        if out.is_file():
            with open(out, "ab"):
                pass
    except OSError as exc:
        raise CliError(f"{flag} {path} cannot be written ({place}: {exc.strerror or one_line(exc)})") from None
    return out


def quiet_loading() -> None:
    """Silence the library progress bars shown while a model loads; the CLI prints its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def load_run(store: RunStore, ref: str) -> Run:
    """A run by id in ``store`` or by folder path (anything with a path separator, or an existing folder)."""
    if os.sep in ref or "/" in ref or (not (store.root / ref).exists() and os.path.isdir(ref)):
        return store.load(os.path.abspath(os.path.expanduser(ref)))
    return store.load(ref)


def label(run: Run | RunInfo) -> str:
    """The method label of a :class:`Run` or :class:`RunInfo` (from its config, else from its id)."""
    return str(run.config.get("label") or run.label)


def fmt_num(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
