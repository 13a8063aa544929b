"""The class -> caption word mapping (assets/imagenet_words.tsv): a data file a person reads and edits.

Format, one line per classifier class (lines starting with # and blank lines are ignored):
    index<TAB>class name<TAB>caption word        (an empty word: the class gives no tag)
Several classes may share a word ("dog" for every breed); their probabilities are summed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from capgen.errors import TagsError

# Where the bundled ImageNet-1k mapping lives (package data); built by scripts/build_imagenet_words.py.
IMAGENET_WORDS = "assets/imagenet_words.tsv"
# Words as captions are normalised: lowercase letters, single spaces between words.
_WORD = re.compile(r"[a-z]+( [a-z]+)*")


@dataclass(frozen=True)
class WordMap:
    """Class index -> word ('' = no tag), and the words in first-seen order."""

    class_words: tuple[str, ...]  # one per class
    words: tuple[str, ...]  # distinct non-empty words
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_words)

    def matrix(self) -> np.ndarray:
        """(num_classes, num_words) 0/1 float32: class probabilities @ matrix = word probabilities."""
        col = {w: j for j, w in enumerate(self.words)}
        m = np.zeros((self.num_classes, len(self.words)), dtype=np.float32)
        for i, w in enumerate(self.class_words):
            if w:
                m[i, col[w]] = 1.0
        return m

    @classmethod
    def from_lines(cls, lines, source: str = "<lines>") -> "WordMap":
        """Parse the TSV format; any malformed line is a TagsError naming `source` and the line."""
        found: dict[int, str] = {}
        for n, raw in enumerate(lines, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.split("\t")
            where = f"{source}, line {n}"
            if len(fields) not in (2, 3):  # 2: an editor dropped the trailing tab of an empty word
                raise TagsError(
                    f"{where}: expected 'index<TAB>class name<TAB>word', got {len(fields)} "
                    f"tab-separated fields in {line[:60]!r}"
                )
            index_text, word = fields[0].strip(), " ".join(fields[2].lower().split()) if len(fields) == 3 else ""
            if not index_text.isdigit():
                raise TagsError(f"{where}: class index must be a non-negative integer, got {index_text!r}")
            index = int(index_text)
            if index in found:
                raise TagsError(f"{where}: class {index} is listed twice")
            if word and not _WORD.fullmatch(word):
                raise TagsError(
                    f"{where}: word {fields[2].strip()!r} must be letters and spaces only "
                    "(as captions are written, e.g. 'teddy bear')"
                )
            found[index] = word
        if not found:
            raise TagsError(f"{source}: no classes listed")
        missing = sorted(set(range(max(found) + 1)) - set(found))
        if missing:
            raise TagsError(
                f"{source}: classes must be numbered 0..{max(found)} without gaps; "
                f"missing {', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}"
            )
        class_words = tuple(found[i] for i in range(len(found)))
        words = tuple(dict.fromkeys(w for w in class_words if w))
        if not words:
            raise TagsError(f"{source}: every word is empty; no class would give a tag")
        return cls(class_words, words, source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "WordMap":
        """Read a mapping file (None = the bundled ImageNet-1k one)."""
        path = Path(str(resources.files("capgen").joinpath(IMAGENET_WORDS))) if path is None else Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TagsError(f"{path}: tag word file does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TagsError(f"{path}: cannot read tag word file ({type(e).__name__})") from None
        return cls.from_lines(text.splitlines(), str(path))


def stutters(tokens) -> bool:
    """Whether a caption has a word twice in a row: in human caption text, a typo ("a fire fire truck
    parked in a parking lot", "stacked on on the back"), so never a caption capgen takes from it."""
    return any(a == b for a, b in zip(tokens, tokens[1:]))


def mention_index(words: list[str]) -> dict[tuple[str, ...], int]:
    """Token sequences that mention tag word j -> j: the word, its plurals ("bus" -> "buses")."""
    out: dict[tuple[str, ...], int] = {}
    for j, w in enumerate(words):
        *head, last = w.split()
        forms = {last, last + "s", last + "es"}
        if last.endswith("y"):
            forms.add(last[:-1] + "ies")
        for f in forms:
            out.setdefault((*head, f), j)
    return out


def phrases_in(tokens, table: dict, longest: int) -> set:
    """The values of `table` (token tuple -> value) whose phrases occur in `tokens`; the longest
    phrase wins at each position: "teddy bear" names no bear, "hot dog" no dog."""
    found, i = set(), 0
    while i < len(tokens):
        for n in range(min(longest, len(tokens) - i), 0, -1):
            value = table.get(tuple(tokens[i : i + n]))
            if value is not None:
                found.add(value)
                i += n
                break
        else:
            i += 1
    return found


def mentions(captions, index: dict[tuple[str, ...], int], longest: int) -> list[int]:
    """Sorted tag word indices mentioned by any caption (token tuples) of one photo (phrases_in)."""
    return sorted(set().union(*(phrases_in(tokens, index, longest) for tokens in captions)))


def caption_groups(data: dict, key: str, path, per: str = "") -> list[list[str]]:
    """data[key] of an index file (scene captions, neighbour captions): a non-empty list of
    non-empty lists of non-empty captions, else TagsError naming the file and the key."""
    groups = data.get(key)
    if (
        not isinstance(groups, list)
        or not groups
        or not all(isinstance(s, list) and s and all(isinstance(c, str) and c.strip() for c in s) for s in groups)
    ):
        raise TagsError(f"{path}: '{key}' must be a non-empty list{per} of non-empty lists of captions")
    return groups
