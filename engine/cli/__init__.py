"""The ``magicapture`` command: the studio's work, headless.

Every subcommand is a thin call into the engine; heavy imports happen inside the handlers so that
``magicapture --help`` is instant. Under ``accelerate launch`` the ``train`` subcommand runs on
several processes (the trainer uses accelerate itself).

One module a job: `parser` (the subcommands and their options), `commands` (what each runs),
`progress` (what a long command shows while it works), `entry` (`main`: run, report errors).
"""

from engine.cli.commands import CommandError
from engine.cli.entry import EXIT_BUG, LOG_LIMIT, main
from engine.cli.parser import EXIT_USER_ERROR, build_parser

__all__ = ["EXIT_BUG", "EXIT_USER_ERROR", "LOG_LIMIT", "CommandError", "build_parser", "main"]
