"""The one exception type of rtdetrv2_np.

Every failure a user can cause (a missing or broken file, a refused checkpoint, no weights while offline, a failed
download) is raised as `RTDetrError` with a one-line message that says which file or input is at fault, what is
wrong with it, and what to do. The command-line entry point prints it as `error: <message>` and exits non-zero;
anything else that escapes is a bug in this package.
"""


class RTDetrError(Exception):
    """A user-facing error: one line naming the file or input, what is wrong, and what to do."""
