"""Errors raised by the export pipeline.

Each one is a single line that says what went wrong and what to do; the CLI prints it and
exits with `exit_code` (2: the user can fix it). Nothing half-written is left behind.

    ExportError                       exit 2
    ├── SourceNotFoundError           no such file, folder or default model name
    ├── CorruptSourceError            a GGUF or model folder that cannot be read
    ├── UnsupportedModelError         an architecture or task we cannot export
    ├── BackendUnavailableError       e.g. TensorRT without an NVIDIA GPU
    ├── FetchError                    `appliance pull` could not fetch or unpack a package
    ├── DestinationExistsError        the output directory exists (use --force)
    ├── InsufficientResourcesError    the machine lacks the memory or disk the export needs
    └── ParityError                   the engine disagrees with the PyTorch model
"""

from __future__ import annotations


class ExportError(Exception):
    """Base of export errors; the message is one line meant for the user."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SourceNotFoundError(ExportError):
    """The model source does not exist."""


class CorruptSourceError(ExportError):
    """The model source exists but cannot be read."""


class UnsupportedModelError(ExportError):
    """The model's architecture or task is not one we can export."""


class BackendUnavailableError(ExportError):
    """The requested backend cannot run on this machine."""


class FetchError(ExportError):
    """A default model could not be downloaded or unpacked."""


class DestinationExistsError(ExportError):
    """The output directory already exists."""


class InsufficientResourcesError(ExportError):
    """The machine does not have the memory or disk the export needs (checked before any work)."""


class ParityError(ExportError):
    """The exported engine does not reproduce the reference model."""
