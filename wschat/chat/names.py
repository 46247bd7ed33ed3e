"""When two names are the same name: `José` typed two ways (NFC, NFD), `José` with a Cyrillic
o (U+043E) and `admin`/`ADMIN` would otherwise sit side by side in one room, each passing for
the other.

A name's key is the UTS #39 confusable skeleton of its NFC case-folded form: NFD, each
character replaced by its prototype from Unicode's confusables.txt, NFD again. Rooms, the
roster and signed names compare keys; everything shown keeps the name as typed.

The table is confusables.tsv beside this module, generated from confusables.txt by
bench/tools/confusables.py (docs/deployment.md says how to bring it up to date).
"""

from __future__ import annotations

import unicodedata
from functools import cache, lru_cache
from importlib.resources import files

# Keys of recent names: every join, presence change and roster change asks for one.
KEY_CACHE_SIZE = 65536


@cache
def prototypes() -> dict[int, str]:
    """confusables.tsv as a str.translate table: code point -> its prototype."""
    table: dict[int, str] = {}
    text = files("wschat.chat").joinpath("confusables.tsv").read_text(encoding="utf-8")
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        source, target = line.split("\t")
        table[int(source, 16)] = "".join(chr(int(cp, 16)) for cp in target.split())
    return table


@lru_cache(maxsize=KEY_CACHE_SIZE)
def name_key(name: str) -> str:
    """What names are unique by: equal for names that read the same."""
    folded = unicodedata.normalize("NFC", name).casefold()
    mapped = unicodedata.normalize("NFD", folded).translate(prototypes())
    # Some prototypes are capitals (`0` reads as `O`): fold again, so that `b0b` is `bob`.
    return unicodedata.normalize("NFD", mapped.casefold())
