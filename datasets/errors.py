"""Errors raised by the :mod:`datasets` package."""


class DatasetError(ValueError):
    """Bad dataset settings or bad input data (IDX files, cache files).

    A subclass of :class:`ValueError`, so ``except ValueError`` catches it too.  The message
    always names the problem and, for file errors, the file.
    """
