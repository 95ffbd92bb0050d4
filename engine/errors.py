"""`UserError`: the base of every engine error whose message is a sentence for the user.

Such a message names the thing and what to do. The CLI prints it as one line (exit status 2) and
the studio logs it as one line; any other exception is a bug and keeps its traceback.
`is_user_error` tells the two apart.
"""

from __future__ import annotations


class UserError(Exception):
    """An error whose message is a full sentence for the user, naming the thing and what to do."""


NOT_YET_DERIVED = frozenset({
    "engine.config.ConfigError",
    "engine.data.DataError",
    "engine.training.errors.TrainingError",
    "engine.training.errors.TrainingCancelled",
    "engine.postprocess.PostprocessError",
    "engine.evaluate.EvaluationError",
})  # fmt: skip
"""User errors that do not derive from `UserError` yet, by qualified name; each goes once its class
does."""


def is_user_error(error: BaseException) -> bool:
    """Whether ``error``'s message is a sentence for the user (a `UserError`); anything else is a bug."""
    if isinstance(error, UserError):
        return True
    return any(f"{kind.__module__}.{kind.__qualname__}" in NOT_YET_DERIVED for kind in type(error).__mro__)
