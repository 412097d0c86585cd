"""Errors a user can fix; the CLI prints them as one line and exits with code 2."""


class OKDUserError(Exception):
    """A problem with the user's input (data, config, checkpoint, paths), not a bug in okd."""
