"""Reading a Content-Type header: one parse, shared by ingest and the API's JSON bodies.

RFC 9110 section 8.3.1: media-type = type "/" subtype parameters, each part a token, and a
parameter's value a token or a quoted string. Anything else (a list, a space inside the type, a
stray character) is not one media type, whatever it ends with. The value comes from an
unauthenticated sender, so the pattern has no ambiguity to backtrack over: every repetition is
possessive and whitespace belongs to exactly one place.
"""

from __future__ import annotations

import re
from functools import lru_cache

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
_QUOTED = r'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*+"'
_MEDIA_TYPE = re.compile(
    rf"[ \t]*+({_TOKEN})/({_TOKEN})"
    rf"(?:[ \t]*+;(?:[ \t]*+{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))?)*+[ \t]*+"
)


@lru_cache(maxsize=64)  # senders repeat one value: the parse is paid once per distinct value
def is_json_media_type(value: str) -> bool:
    """Whether a Content-Type value is one `application/json` or `application/<x>+json` media
    type, parameters allowed."""
    match = _MEDIA_TYPE.fullmatch(value)
    if match is None or match[1].lower() != "application":
        return False
    subtype = match[2].lower()
    return subtype == "json" or (subtype.endswith("+json") and len(subtype) > len("+json"))
