"""The one exception type the command line turns into a one-line message."""


class LatentThoughtsError(Exception):
    """A user-facing error: bad input, a wrong option, an unreachable server.

    The message must name the culprit (file and line, option, URL) in one line; the CLI prints it
    as ``error: <message>`` and exits with status 2, without a traceback.
    """
