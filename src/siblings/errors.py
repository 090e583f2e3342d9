"""The project's error types: what the library raises for bad input, and how it is worded.

Every error the package raises on purpose for a bad value, a bad file or an output in the
way is a :class:`SiblingsError`; the command line turns exactly these (and the file errors
of the paths the user gave) into one line and exit code 2, while any other exception (a
bug, NumPy's included) keeps its traceback.

The library speaks of arguments, not command-line flags: a message names an argument as
``{name}`` and lists it in ``arguments``. ``str(error)`` writes the bare argument name (what
a Python caller passed); the CLI writes it as its flag through :meth:`SiblingsError.worded`.
This module imports nothing of the package, so every layer may raise these.

Example
-------
>>> err = InputError("{n} must be at least 1, got 0", arguments=("n",))
>>> str(err)
'n must be at least 1, got 0'
>>> err.worded(lambda name: "--" + name)
'--n must be at least 1, got 0'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


class SiblingsError(Exception):
    """An error of the project: bad input from the caller, reported without a traceback.

    Parameters
    ----------
    message
        What is wrong and, where it helps, what to do. An argument is written ``{name}``.
    arguments
        The argument names written ``{name}`` in ``message``; a mapping gives the library's
        wording of each (e.g. ``{"resume": "resume=False"}``), a sequence writes the names.
    """

    def __init__(
        self,
        message: str = "",
        *args: Any,
        arguments: Sequence[str] | Mapping[str, str] = (),
    ):
        self.template = str(message)
        self.arguments: dict[str, str] = (
            dict(arguments) if isinstance(arguments, Mapping) else {a: a for a in arguments}
        )
        super().__init__(self.worded(), *args)

    def worded(self, name: Callable[[str], str] | None = None) -> str:
        """The message with each argument written as ``name(argument)``.

        Without ``name``, each argument is written in the library's wording (its name).
        """
        text = self.template
        for argument, plain in self.arguments.items():
            text = text.replace("{" + argument + "}", plain if name is None else name(argument))
        return text

    def __reduce__(self):
        # Errors cross process pools (cohort workers); subclasses have their own
        # constructors, so rebuild from the instance's state rather than calling them.
        return _restore, (type(self), self.args, self.__dict__)


def _restore(cls: type, args: tuple, state: dict) -> SiblingsError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class InputError(SiblingsError, ValueError):
    """A value or a file given by the caller is not usable (also a :class:`ValueError`)."""


class OutputExistsError(SiblingsError, FileExistsError):
    """An output path is in the way (also a :class:`FileExistsError`)."""


class MissingTissueWarning(UserWarning):
    """A twin lacks a tissue: its siblings are edited around it.

    A category of its own, so that a caller reporting it once (the edit pipeline) can
    silence the repeats by category instead of by the text of the message.
    """
