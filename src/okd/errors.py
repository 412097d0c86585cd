"""Errors a user can fix; the CLI prints them as one line and exits with code 2."""


class OKDUserError(Exception):
    """A problem with the user's input (data, config, checkpoint, paths), not a bug in okd."""


class OKDWarning(UserWarning):
    """Something okd did instead of what the user may have meant (an option it ignored); the CLI prints
    it as one ``okd <command>: warning: ...`` line, the Python API as a normal warning."""
