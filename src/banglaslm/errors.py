"""The one error type for mistakes a user can fix.

Functions raise `UserError` for bad input (a missing file, a wrong option, a damaged
checkpoint); the CLI prints its message as a single line and exits non-zero. Bugs keep
raising ordinary exceptions so they still show a traceback.
"""


class UserError(Exception):
    """A problem in what the user asked for, with a message that names the fix."""
