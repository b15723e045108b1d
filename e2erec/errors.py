"""User-facing errors: the CLI prints these as one clear line (no traceback) and exits with status 2, or with the
error's own `exit_code`."""


class E2ERecError(Exception):
    """Base for errors caused by the user's input (files, data, artifacts), as opposed to bugs."""


class DataError(E2ERecError, ValueError):
    """Bad input data. The message names the file and, where known, the line or column."""


class ArtifactMismatchError(E2ERecError, ValueError):
    """A saved artifact (semantic IDs, checkpoint) does not match the dataset or config it is used with."""


class IntegrityError(E2ERecError, ValueError):
    """Files on disk differ from the manifest written with them: cut short, overwritten or corrupted."""


class CheckpointWriteError(E2ERecError, OSError):
    """A checkpoint could not be written (a full disk, a quota, a lost mount). Nothing partial is left behind; the
    run stops with `exit_code` so a job script can tell it from a crash."""

    exit_code = 74  # EX_IOERR (sysexits.h)


class RankLostError(E2ERecError, RuntimeError):
    """A collective failed because another rank died or hung. The survivors stop; the job is relaunched and resumes
    from the last checkpoint."""

    exit_code = 75  # EX_TEMPFAIL (sysexits.h): a relaunch may succeed
