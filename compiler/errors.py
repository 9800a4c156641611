"""User-facing errors: the CLI prints ``attnc: error: <message>`` and exits 2."""


class AttncError(Exception):
    """An error in the user's input (file, model, option), stated in one line that
    names the file, node or field at fault."""
