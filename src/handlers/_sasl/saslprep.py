"""SASLprep (RFC 4013), the stringprep profile SCRAM applies to usernames and passwords."""

from __future__ import annotations

import stringprep
import unicodedata
from collections.abc import Callable

from .errors import SASLPrepError

_PROHIBITED: tuple[Callable[[str], bool], ...] = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def saslprep(text: str, *, field: str = "password", allow_unassigned: bool = True) -> str:
    """``text`` prepared with SASLprep: mapped, NFKC-normalised and checked.

    ``allow_unassigned`` gives the "query" semantics RFC 5802 asks SCRAM clients to use
    (code points unassigned in Unicode 3.2 pass); pass ``False`` for "stored strings".
    Raises :class:`SASLPrepError` naming ``field``, never the text or the offending
    character, since either may be part of a password.
    """
    # RFC 4013 section 2.1: non-ASCII spaces become SPACE, "commonly mapped to nothing"
    # characters disappear.
    mapped = "".join(
        " " if stringprep.in_table_c12(char) else char
        for char in text
        if not stringprep.in_table_b1(char)
    )
    # Section 2.2: normalisation form KC of the Unicode version stringprep is defined on.
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for char in prepared:
        if any(table(char) for table in _PROHIBITED):
            raise SASLPrepError(f"the {field} contains a character SASLprep prohibits", field)
        if not allow_unassigned and stringprep.in_table_a1(char):
            raise SASLPrepError(
                f"the {field} contains a code point unassigned in Unicode 3.2", field
            )
    _check_bidi(prepared, field)
    return prepared


def _check_bidi(text: str, field: str) -> None:
    # RFC 3454 section 6: a string with right-to-left characters must not hold
    # left-to-right ones, and must start and end with a right-to-left character.
    if not any(stringprep.in_table_d1(char) for char in text):
        return
    if any(stringprep.in_table_d2(char) for char in text) or not (
        stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])
    ):
        raise SASLPrepError(
            f"the {field} mixes right-to-left and left-to-right text in a way SASLprep prohibits",
            field,
        )
