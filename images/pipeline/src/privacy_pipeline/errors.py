"""The one exception type a user sees.

A ``StageError`` is bad input or a refused operation: the CLI prints its
message as one line, writes it to the pod's termination log and exits non-zero
without a traceback. Anything else is a bug and keeps its traceback.
"""


class StageError(Exception):
    """A clear, actionable failure of a stage: the message names stage, file and row or field."""
