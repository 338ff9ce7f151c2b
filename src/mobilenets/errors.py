"""The one exception type for mistakes a user can fix.

Library code raises :class:`UserError` (a ``ValueError``) with a message that names the bad value and the fix;
the CLI turns it into a single line and a non-zero exit. ``assert`` stays for internal invariants.
"""


class UserError(ValueError):
    """Bad input from the user: wrong name, value, file or option. The message says what to do instead."""
