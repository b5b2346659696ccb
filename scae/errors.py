"""The one exception type for bad user input.

Pipelines catch :class:`InputError` and turn it into one line on stderr and exit status 2;
everything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user: a missing or corrupt file, a bad shape, key or value.

    The message names the file or key and says what was expected, in one line.
    """
