"""The one error type users see: a clear, one-line cause. The CLI prints it and exits non-zero."""


class SlmError(Exception):
    """A user-facing failure (bad input, missing file, impossible config). Its message is one line."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def require(condition: bool, message: str) -> None:
    """Raise SlmError(message) unless condition holds."""
    if not condition:
        raise SlmError(message)
