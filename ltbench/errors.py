"""The one exception type that reaches the user as a single line (no traceback)."""


class LtbenchError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The message names the file or option at fault and what is wrong with it; the CLI prints
    ``ltbench: error: <message>`` and exits with status 2.
    """
