"""Who may do what on edge-view: everyone who reaches the page may look; acting needs a token.

A tokens file holds one line per person or terminal, `name role token` (`#` starts a comment):

    anna    operator  3f9c...   may clear a rejected part as good
    ben     engineer  a41d...   may also build the next bank version and activate one (staged or older)

The name is what the bank store records as who cleared a part or activated a version, so give each
person a token of their own (`python -c "import secrets; print(secrets.token_hex(24))"`). The page
sends it as `Authorization: Bearer <token>` (kept in the browser tab's session storage, not a
cookie, so another site cannot act with it). The file must be readable by its owner only.
"""

from __future__ import annotations

import hmac
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from edge.errors import UsageError

ROLES = ("operator", "engineer")  # in increasing power: an engineer may do what an operator may
MIN_TOKEN_CHARS = 20
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True)
class Person:
    name: str
    role: str

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


class Access:
    def __init__(self, tokens: dict[str, Person] | None = None) -> None:
        self.tokens = tokens or {}

    @property
    def read_only(self) -> bool:
        return not self.tokens

    def person(self, authorization: str | None) -> Person | None:
        """The person an `Authorization: Bearer <token>` header names, if any (constant-time match)."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        given = authorization.removeprefix("Bearer ").strip().encode()
        found = None
        for token, person in self.tokens.items():
            if hmac.compare_digest(token.encode(), given):
                found = person
        return found

    @classmethod
    def from_file(cls, path: str | Path) -> Access:
        path = Path(path)
        try:
            mode = path.stat().st_mode
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the tokens file {path}: {exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(f"{path} is readable by others: `chmod 600 {path}` (it holds the tokens)")
        tokens: dict[str, Person] = {}
        for number, line in enumerate(lines, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            where = f"{path} line {number}"
            if len(fields) != 3:
                raise UsageError(f"{where}: expected `name role token`, got {len(fields)} fields")
            name, role, token = fields
            if not _NAME.match(name):
                raise UsageError(f"{where}: a name is 1-64 letters, digits or . _ @ -")
            if role not in ROLES:
                raise UsageError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
            if len(token) < MIN_TOKEN_CHARS:
                raise UsageError(f"{where}: the token is shorter than {MIN_TOKEN_CHARS} characters")
            if token in tokens:
                raise UsageError(f"{where}: this token is also {tokens[token].name}'s: tokens must differ")
            tokens[token] = Person(name, role)
        if not tokens:
            raise UsageError(f"{path} names nobody")
        return cls(tokens)
