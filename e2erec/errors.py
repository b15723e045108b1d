"""User-facing errors: the CLI prints these as one clear line (no traceback) and exits with status 2."""


class E2ERecError(Exception):
    """Base for errors caused by the user's input (files, data, artifacts), as opposed to bugs."""


class DataError(E2ERecError, ValueError):
    """Bad input data. The message names the file and, where known, the line or column."""


class ArtifactMismatchError(E2ERecError, ValueError):
    """A saved artifact (semantic IDs, checkpoint) does not match the dataset or config it is used with."""
