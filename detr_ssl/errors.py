"""Exceptions that the command-line tools turn into one clear line instead of a traceback."""


class DetrSslError(Exception):
    """Base class: a problem the user can fix (bad input, bad configuration, missing file)."""


class DataError(DetrSslError):
    """A dataset file (annotation JSON, image, proposal cache) is missing or malformed.

    The message always names the offending file and the problem.
    """


class CheckpointError(DetrSslError):
    """A checkpoint cannot be read, is not a checkpoint, or does not fit the model."""


class ConfigError(DetrSslError):
    """A configuration value is invalid or inconsistent."""


class BackendUnavailableError(DetrSslError):
    """An explicitly requested compute backend (e.g. mmcv's CUDA op) cannot be used here."""
