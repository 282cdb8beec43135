"""The one exception hierarchy of the project.

Lower layers raise these; only the edges (CLI, API) turn them into exit codes and HTTP
statuses. Messages name the offending field in backticks and show the bad value.
"""

from __future__ import annotations


class AllocatorError(Exception):
    """Base class of every error this project raises on purpose."""


class InvalidSpecError(AllocatorError, ValueError):
    """Raised when user input (a config, a file, a budget, an argument) is malformed."""


class UnknownLayerError(InvalidSpecError):
    """Raised when a config names a layer that the model does not have or cannot quantize."""


class UnsupportedBitWidthError(InvalidSpecError):
    """Raised when a bit-width outside the supported range (2..8) is requested."""


class UnknownComponentError(AllocatorError, KeyError):
    """Raised when a solver, estimator, model or profile is looked up by an unknown name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(AllocatorError, ImportError):
    """Raised when an optional package needed for the requested feature is not installed."""


class KernelUnavailableError(AllocatorError, RuntimeError):
    """Raised when a kernel path is forced on a device or build that does not provide it."""


class JobNotFoundError(AllocatorError, KeyError):
    """Raised when a job id is not in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DuplicateJobError(AllocatorError):
    """Raised when a job is created with an id that already exists."""


class FinishedJobError(AllocatorError):
    """Raised when a finished job (succeeded, failed, cancelled) is asked to change."""


class StoreError(AllocatorError):
    """Raised when the job store fails underneath (database unreachable, integrity error)."""


class CLIUsageError(AllocatorError):
    """Raised when command-line arguments are inconsistent in a way typer cannot check."""
