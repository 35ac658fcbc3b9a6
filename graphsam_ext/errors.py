"""The exception type of mistakes a user can fix (a bad option, a missing file, an unusable split).

``UserError`` subclasses ``ValueError``, so library callers that catch ``ValueError`` keep
working; the command line prints a ``UserError`` as one line and lets every other exception
keep its traceback, because that is a bug to report, not a typo to fix.
"""


class UserError(ValueError):
    """A problem in the user's input; the message names the argument and the fix."""
