"""The one exception type the toolkit raises for bad input; the CLI prints it as a single line."""


class PerceiverLMError(Exception):
    """A user-facing error: the message names the file, option or field and what was expected."""
