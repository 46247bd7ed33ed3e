"""What a search matches: words folded the same way when a message is indexed and when it is
looked for, so that every store finds the same messages.

A message matches a query when it contains every word of the query, ignoring case and accents
(`resume` finds `Résumé`); the query's last word also matches as a prefix (`depl` finds
`deploy`), which is what a person typing into a search box expects.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from wschat.chat.errors import InvalidField

MAX_QUERY_CHARS = 200
# A query of more words than this is refused: each word is one more index lookup.
MAX_QUERY_WORDS = 16
_WORD_RE = re.compile(r"\w+")


def fold(text: str) -> str:
    """Lower case without accents: NFKD splits `é` into `e` and a combining mark, dropped."""
    if text.isascii():
        # Nothing to decompose, and casefold is lower for ASCII: ~200x faster, most chat text.
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def words(text: str) -> list[str]:
    """The folded words of a text, in order: what a store indexes for it."""
    return _WORD_RE.findall(fold(text))


def indexed_text(text: str) -> str:
    """The folded words of a text, separated by spaces: what an engine's full-text index
    (SQLite FTS5, PostgreSQL's tsvector) gets, so that its own tokenizer has nothing to fold."""
    return " ".join(words(text))


@dataclass(frozen=True, slots=True)
class Query:
    """`whole` must each be a word of the message; `prefix` must begin one."""

    q: str
    whole: tuple[str, ...]
    prefix: str

    @classmethod
    def parse(cls, q: str, ref: str | None = None) -> Query:
        if not 1 <= len(q) <= MAX_QUERY_CHARS:
            raise InvalidField(f"'q' must be 1-{MAX_QUERY_CHARS} characters", ref)
        found = words(q)
        if not found:
            raise InvalidField("'q' must hold at least one word (letters or digits)", ref)
        if len(found) > MAX_QUERY_WORDS:
            raise InvalidField(f"'q' may hold at most {MAX_QUERY_WORDS} words", ref)
        return cls(q, tuple(dict.fromkeys(found[:-1])), found[-1])

    def matches(self, text: str) -> bool:
        """The reference rule, for stores without an index of their own (memory) and tests."""
        found = set(words(text))
        return all(word in found for word in self.whole) and any(
            word.startswith(self.prefix) for word in found
        )
