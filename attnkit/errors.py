"""The one exception type that reaches the user.

Every bad input attnkit recognises is raised as :class:`AttnkitError` with a
message of one line that names the problem and the fix.  The command line
prints it to stderr and exits with code 2, without a traceback (unless
``--debug``).
"""


#: Every character ``str.splitlines`` breaks at, shown escaped instead.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class AttnkitError(Exception):
    """A user-facing error: one line naming the problem and the fix.

    The message stays one line even when it quotes user input that holds line breaks (a file
    name, an override value): they are shown escaped, as ``\\n``."""

    exit_code = 2

    def __init__(self, message: object = "") -> None:
        super().__init__(str(message).translate(_LINE_BREAKS))
