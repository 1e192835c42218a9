"""Errors whose message is the one line a user sees (the CLI prints it and exits 2)."""


class SaliencyError(Exception):
    """Base class: ``str(error)`` is a complete, user-facing sentence."""


class ModelError(SaliencyError):
    """The pilot file is missing, unreadable, or has no usable conv trunk."""


class InputError(SaliencyError):
    """An image, tub or path given to a tool is not what it must be."""


class BackendUnavailable(SaliencyError):
    """A backend cannot run here (library missing, no device); says how to fix it."""
