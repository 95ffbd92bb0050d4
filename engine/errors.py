"""`UserError`: the base of every engine error whose message is a sentence for the user.

Such a message names the thing and what to do. The CLI prints it as one line (exit status 2) and
the studio logs it as one line; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error whose message is a full sentence for the user, naming the thing and what to do."""
