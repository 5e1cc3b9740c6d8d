"""The one exception type a user ever sees: the CLI prints its message as a single line and exits 2."""


class DijiError(Exception):
    """A problem with the user's input or environment; the message names the problem and the fix."""
