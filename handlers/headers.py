"""Checks, made when the config loads, for handler options that end up in an HTTP request.

A header value with a CR, LF or NUL (say a token read through `token_env` from a file that ends
in a newline) is refused by the HTTP library only when the request goes out, and its error
quotes the value: the secret would land in the delivery's `last_error`, the API, the live stream
and the log. These checks turn it into a config error naming the key, never quoting the value,
and `transport_error` is the one way a failed request is described: the exception's type and
the host, nothing of the request.
"""

from __future__ import annotations

import string
from typing import Annotated

import httpx
from pydantic import AfterValidator, SecretStr

# RFC 9110 token characters: what a header name may be made of.
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
# What httpx sends as a header value: ASCII, printable, with spaces and tabs only inside.
_VALUE_CHARS = frozenset(chr(code) for code in range(0x20, 0x7F)) | {"\t"}


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot be an HTTP header name, or None when it can."""
    if not name:
        return "must not be empty"
    if not set(name) <= _TOKEN_CHARS:
        return "may hold only letters, digits and !#$%&'*+-.^_`|~ (no spaces or controls)"
    return None


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot be an HTTP header value, or None; the value is never quoted."""
    if not set(value) <= _VALUE_CHARS:
        return ("must be printable ASCII: no line breaks, NUL or other control characters "
                "(check the file or variable it was read from)")
    if value != value.strip(" \t"):
        return "has leading or trailing whitespace (check the file or variable it was read from)"
    return None


def url_problem(url: str) -> str | None:
    """Why `url` cannot be sent as it is (whitespace or control characters), or None.
    Non-ASCII is fine: httpx encodes an international host name or path."""
    if any(char.isspace() or ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in url):
        return ("must hold no whitespace or control characters "
                "(check the file or variable it was read from)")
    return None


def _checked_name(name: str) -> str:
    problem = header_name_problem(name)
    if problem:
        raise ValueError(f"header name {problem}")
    return name


def _checked_value(value: str) -> str:
    problem = header_value_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _checked_secret(value: SecretStr) -> SecretStr:
    _checked_value(value.get_secret_value())
    return value


HeaderName = Annotated[str, AfterValidator(_checked_name)]
HeaderValue = Annotated[str, AfterValidator(_checked_value)]
SecretHeaderValue = Annotated[SecretStr, AfterValidator(_checked_secret)]


def transport_error(exc: BaseException) -> str:
    """A failed request described by the exception's type and the host it was for; never its
    message, which may quote a header, the URL or the body."""
    host = None
    if isinstance(exc, httpx.HTTPError):
        try:
            host = exc.request.url.host
        except RuntimeError:  # an error raised before any request was made
            pass
    return f"{type(exc).__name__} calling {host}" if host else type(exc).__name__
