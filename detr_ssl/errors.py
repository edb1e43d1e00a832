"""Exceptions that the command-line tools turn into one clear line instead of a traceback."""


#: What PyTorch puts in the message of an exception it re-raises from a DataLoader worker process.
_WORKER_MARKER = "Original Traceback"


def original_message(text: str, error_type: type[BaseException] | None = None) -> str:
    """An exception's message ``text`` as it was raised: ``text`` itself, or, when a DataLoader worker raised
    the exception and PyTorch folded the worker's traceback into the message, the original message.

    The traceback ends with ``<module>.<ClassName>: <original message>``: with ``error_type`` the message is
    what follows that line's prefix (all of it, even over several lines), else what follows the first ``: ``
    of the last line.
    """
    if _WORKER_MARKER not in text:
        return text
    if error_type is not None:
        prefix = f"{error_type.__module__}.{error_type.__qualname__}: "
        start = text.rfind("\n" + prefix)
        if start >= 0:
            return text[start + 1 + len(prefix):].strip()
    return text.strip().splitlines()[-1].split(": ", 1)[-1]


class DetrSslError(Exception):
    """Base class: a problem the user can fix (bad input, bad configuration, missing file).

    The message is one line. When a DataLoader worker process raised the error, PyTorch re-raises it
    in the main process with the worker's whole traceback folded into the message; ``str()`` still
    gives the original one line (the full text stays available as `worker_traceback`).
    """

    @property
    def worker_traceback(self) -> str | None:
        """The worker's traceback when a DataLoader worker raised this error, else None."""
        text = super().__str__()
        return text if _WORKER_MARKER in text else None

    def __str__(self) -> str:
        return original_message(super().__str__(), type(self))


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


class NonFiniteError(DetrSslError, ValueError):
    """A loss or the predictions it is computed from became NaN or infinite (the training loop stops or,
    with ``--on-nonfinite skip``, skips the batch on every process)."""
