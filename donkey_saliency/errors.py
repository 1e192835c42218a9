"""Errors whose message is the one line a user sees (the CLI prints it and exits 2)."""


def first_line(error, limit=200):
    """The first line of an exception's message (its class name when it has none), for quoting a
    library's error inside one of ours; cut to ``limit`` characters (None: whole)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line if limit is None or len(line) <= limit else line[:limit - 3] + "..."


class SaliencyError(Exception):
    """Base class: ``str(error)`` is a complete, user-facing sentence."""


class ModelError(SaliencyError):
    """The pilot file is missing, unreadable, or has no usable conv trunk."""


class InputError(SaliencyError):
    """An image, tub or path given to a tool is not what it must be."""


class BackendUnavailable(SaliencyError):
    """A backend cannot run here (library missing, no device); says how to fix it."""


class MissingLibrary(SaliencyError, ImportError):
    """A library the car is expected to have is not importable; the message says how to get it."""


RUNTIME_INSTALL = "pip freeze > car.txt && pip install -c car.txt 'donkey-saliency[runtime]'"


def setup_failure(error):
    """One line for a failure while adding saliency to a car: what failed, and how to fix it."""
    if isinstance(error, SaliencyError) and not isinstance(error, MissingLibrary):
        return str(error)
    if isinstance(error, ImportError):
        return "a library it needs cannot be imported (%s); install what the car lacks with: %s" % (
            first_line(error), RUNTIME_INSTALL)
    return "%s: %s (a bug: please report it with this line)" % (type(error).__name__, first_line(error))
