"""Errors a user can fix (a bad config, a missing or truncated checkpoint, a missing data root, a checkpoint that
does not fit the data): the entry points report them in one line, without a traceback (`cli.common.run_app`)."""

from __future__ import annotations


class UserError(Exception):
    """Mixed into the errors of bad input: its message says what is wrong and what was expected."""


class InputError(UserError, ValueError):
    """A value, file or setting that cannot be used."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder that the input names and that does not exist."""


class ExistingOutputError(UserError, FileExistsError):
    """An output that would overwrite an earlier run's."""


def user_error_in(error: BaseException | None) -> UserError | None:
    """`error` or the first of its causes (Hydra wraps what an instantiated class raised) that is a UserError."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class InputTypeError(UserError, TypeError):
    """An object of the wrong kind (a network the engine cannot read, a tensor where a list is expected)."""
