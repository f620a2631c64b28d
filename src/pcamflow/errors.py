"""The one exception type for mistakes a user can fix (bad input, bad config)."""


class PcamflowError(Exception):
    """A user-facing error: its message is one line naming the file or key and the problem."""
