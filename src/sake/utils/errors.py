"""The one error type every layer may raise for bad input or bad settings."""


class UserError(Exception):
    """An error whose message says what to do; entry points print it without a traceback."""
