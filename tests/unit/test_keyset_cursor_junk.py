"""A cursor with characters outside its alphabet is refused, whatever its length."""

from __future__ import annotations

import pytest

from asyncdal._keyset import ordering
from asyncdal._model import model_info
from asyncdal.errors import InvalidQueryError
from asyncdal.models import User


def test_junk_appended_to_a_cursor_is_refused_at_every_length() -> None:
    info = model_info(User)
    by_age = ordering(info.mapper, ["age"], info.columns)
    cursors = [by_age.encode([30, 10**digits]) for digits in range(8)]
    assert {len(cursor) % 4 for cursor in cursors} == {0, 2, 3}  # base64 never leaves 1
    for cursor in cursors:
        assert by_age.decode("page()", cursor)[0] == 30
        for junk in ("!", " ", "*", "~"):
            with pytest.raises(InvalidQueryError, match="malformed"):
                by_age.decode("page()", cursor + junk)
