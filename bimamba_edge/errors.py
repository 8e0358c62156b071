"""The one exception type for expected failures: bad input, missing runtime, failed download.

Command-line entry points print it as a single line and exit non-zero; anything else is a bug and
keeps its traceback.
"""


class BimambaError(Exception):
    """An expected failure whose message alone tells the user what is wrong and where."""
