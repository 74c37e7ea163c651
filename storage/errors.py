"""Errors the store raises for bad input; messages say what was wrong and what to change."""


class InvalidInput(ValueError):
    """Input refused at the edge of the store; nothing was written."""


class NotFound(InvalidInput):
    """An id that names no row."""
