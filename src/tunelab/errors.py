"""The base class of every error a user can fix: bad config, data, model reference or run directory.

The CLI catches this one class and prints its message (which says where and what to do) instead of a
traceback."""


class TunelabError(Exception):
    """A problem in what the user gave tunelab; the message names the place and the fix."""
