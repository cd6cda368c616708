"""Command line: ``python -m accel generate | calibrate | compare | breakdown | bench-quality | report | runs | env``.

One module per command family: :mod:`accel.cli.generate` (loads a model), :mod:`accel.cli.runs` (the run store),
:mod:`accel.cli.bench`; method flags (``--tau``, ``--stride``, ...) come from the settings through
:mod:`accel.cli.flags`. Errors the user can act on (:class:`accel.errors.UserError`: bad settings, missing
models, unknown runs) print one ``error: ...`` line and exit 2; a broken package (:class:`accel.errors.DependencyError`)
prints its traceback and then its root cause as the last line, exit 1; any other exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from accel import env
from accel.cli import bench, generate, runs
from accel.cli.common import EXIT_INTERRUPTED, CliError, Formatter
from accel.cli.flags import method_settings, setting_flags
from accel.errors import EXIT_USAGE, DependencyError, Parser, UserError, one_line

__all__ = ["CliError", "build_parser", "main", "method_settings", "setting_flags"]


def _prog() -> str:
    return "accel" if os.path.basename(sys.argv[0] or "") == "accel" else "python -m accel"


def build_parser() -> argparse.ArgumentParser:
    """The ``accel`` argument parser with its subcommands."""
    parser = Parser(
        prog=_prog(),
        formatter_class=Formatter,
        description="Lab bench for training-free acceleration of video diffusion transformers (Wan2.1): "
        "generate videos with dense or sparse attention, then compare runs for quality and speed.",
        epilog="examples:\n"
        '  python -m accel generate --prompt "a red fox" --steps 10\n'
        '  python -m accel generate --prompt "a red fox" --steps 10 --method xattention --tau 0.8\n'
        "  python -m accel runs\n"
        "  python -m accel compare DENSE_RUN_ID SPARSE_RUN_ID\n\n"
        "Run 'python -m accel COMMAND --help' for the options of each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for family in (generate, runs, bench):
        family.add_parsers(sub)
    env.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(None if argv is None else list(argv))
        except SystemExit as exc:  # --help (0) or a usage error (2), already printed
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        return int(args.func(args))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early, e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UserError as exc:  # anything else is a bug or a broken environment: its traceback is kept
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except DependencyError as exc:  # a broken package: the traceback, then its root cause as the last line
        traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1
