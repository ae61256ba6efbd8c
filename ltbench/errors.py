"""The one exception type that reaches the user as a single line (no traceback)."""


class LtbenchError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The message names the file or option at fault and what is wrong with it; the CLI prints
    ``ltbench: error: <message>`` and exits with status 2.
    """


class InputError(LtbenchError):
    """A problem of a file the user gives a run (a pretrained weights file), not of the run itself.

    Raised inside a run, it stops the bench with its line and is never recorded as the run's
    failure: a recorded failure is replayed until ``--retry-failed``, long after the file is fixed.
    """
