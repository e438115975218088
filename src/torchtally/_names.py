r"""What a name may be: one a log line and a formula can show (:func:`check_name`).

A name is text written in any script, so :func:`showable` takes what
``str.isprintable`` takes and, beyond it, the spaces of other widths (a
no-break space before ``%``, an ideographic space) and the zero-width joiners
that written text needs (emoji sequences such as a woman technologist,
Persian and Indic words); it refuses newlines, tabs, other control and format characters
(bidirectional overrides, zero-width spaces) and line separators. Named in
:mod:`torchtally._conventions` too, with the other input rules. Nothing here
imports another torchtally module but :mod:`torchtally.errors`.

Example:
    >>> from torchtally._names import check_name
    >>> check_name('Précision\u00a0%', 'Metric')
    'Précision\xa0%'
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any

from torchtally.errors import InvalidNameError

__all__ = ["check_name", "default_name", "showable"]

_JOINERS = frozenset("\u200c\u200d")  # ZWNJ, ZWJ: parts of words and emoji, not layout


def showable(text: str) -> bool:
    r"""Whether ``text`` shows on one line as written (see the module's rule).

    Example:
        >>> showable('a\u200db'), showable('a\nb')
        (True, False)
    """
    return text.isprintable() or all(
        char.isprintable() or char in _JOINERS or unicodedata.category(char) == "Zs"
        for char in text
    )


def check_name(name: Any, owner: str) -> str:
    """``name`` if a log line and a formula can show it.

    A name is a non-empty string that :func:`showable` takes (spaces, but no
    newline, tab, other control character or line separator, which would
    break log lines and formulas) and that is not only spaces and joiners,
    which show nothing by themselves.

    Raises:
        InvalidNameError: anything else; the message shows the value with ``repr``.

    Example:
        >>> from torchtally._conventions import check_name
        >>> check_name('Mean Error', 'Metric')
        'Mean Error'
    """
    if not isinstance(name, str) or _blank(name) or not showable(name):
        raise InvalidNameError(
            f"{owner}: names must be non-empty strings of printable characters, not only "
            f"spaces or joiners (no newline, tab or other control character), found "
            f"{type(name).__name__} {name!r}"
        )
    return name


def _blank(name: str) -> bool:
    """Whether ``name`` shows nothing: empty, or only spaces (of any width) and joiners."""
    return all(char.isspace() or char in _JOINERS for char in name)


def default_name(fn: Any, owner: str) -> str:
    """The name of a callable's value when none is given.

    A function's ``__name__`` (through ``functools.partial`` layers, so two
    partials of different functions get different names), else the class
    name of a callable object.

    Raises:
        InvalidNameError: the callable is a lambda, whose name says nothing.

    Example:
        >>> import functools
        >>> from torch.nn.functional import mse_loss
        >>> from torchtally._conventions import default_name
        >>> default_name(functools.partial(mse_loss, reduction='sum'), 'Metric')
        'mse_loss'
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name:
        name = type(fn).__name__
    if name == "<lambda>":
        raise InvalidNameError(f"{owner}: a lambda has no usable name; pass name='...'")
    return name
