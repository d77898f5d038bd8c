"""The one exception type that reaches the user.

Every bad input attnkit recognises is raised as :class:`AttnkitError` with a
message of one line that names the problem and the fix.  The command line
prints it to stderr and exits with code 2, without a traceback (unless
``--debug``).
"""


class AttnkitError(Exception):
    """A user-facing error: one line naming the problem and the fix."""

    exit_code = 2
