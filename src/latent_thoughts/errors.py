"""The one exception type the command line turns into a one-line message."""


class LatentThoughtsError(Exception):
    """A user-facing error: bad input, a wrong option, an unreachable server.

    The message must name the culprit (file and line, option, URL) in one line; the CLI prints it
    as ``latent-thoughts: error: <message>`` and exits with ``exit_status`` (2), without a traceback.
    """

    exit_status = 2


class DiskFullError(LatentThoughtsError):
    """No space left (or a quota or file-size limit hit) while writing a named file: exit status 1."""

    exit_status = 1
