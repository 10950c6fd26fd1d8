"""The CLI's two control exceptions."""

from __future__ import annotations


class CliError(Exception):
    """A failure the user can act on; printed as one message, exit status 1."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop what we started."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (SDK errors run to many lines)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
