"""The command's entry point: parse, run the chosen command, and report an error as one line on stderr
(exit status 2 for the user's errors, 1 for bugs) with its traceback in ``<data root>/logs/cli.log``."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from engine.cli.parser import EXIT_USER_ERROR, build_parser
from engine.errors import UserError

EXIT_BUG = 1
LOG_LIMIT = 2**20
"""``logs/cli.log`` is moved to ``cli.log.1`` (replacing it) once it grows past this many bytes."""


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.allow_pickle:
        from engine.models import ALLOW_PICKLE_ENV

        os.environ[ALLOW_PICKLE_ENV] = "1"
    try:
        args.handler(args)
    except Exception as error:
        raise SystemExit(_report(error, argv)) from error


def _report(error: Exception, argv: Sequence[str] | None) -> int:
    """Print one line about ``error`` on stderr and log its traceback; returns the exit status."""
    log = _log_traceback(error, sys.argv[1:] if argv is None else argv)
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, UserError):
        details = f" (Details: {log}.)" if log else ""
        print(f"error: {message}{details}", file=sys.stderr)
        return EXIT_USER_ERROR
    if log is None:
        traceback.print_exception(error)
    where = f"the details in {log}" if log else "the traceback above"
    print(
        f"error: unexpected {type(error).__name__}: {message}. This is a bug; please report it with {where}.",
        file=sys.stderr,
    )
    return EXIT_BUG


def _log_traceback(error: Exception, argv: Sequence[str]) -> Path | None:
    """Append the command and ``error``'s traceback to ``<data root>/logs/cli.log``; None if it cannot be written."""
    from engine.store import data_root

    try:
        path = data_root() / "logs" / "cli.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size > LOG_LIMIT:
            os.replace(path, path.with_name("cli.log.1"))
        entry = f"{time.strftime('%Y-%m-%d %H:%M:%S')} magicapture {' '.join(argv)}\n"
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(entry + "".join(traceback.format_exception(error)) + "\n")
    except OSError:
        return None
    return path
