"""User-facing errors: one clear line, non-zero exit, no traceback (unless ``--debug``)."""


class SemsegError(Exception):
    """An error caused by the user's input (files, flags, data) rather than by a bug."""
