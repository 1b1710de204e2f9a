"""README.md's Performance tables: the text between the bench markers, rewritten by a complete run."""

from __future__ import annotations

from bench.measure import REPO

README = REPO / "README.md"
README_START = "<!-- bench:results:start (written by `make bench`) -->"
README_END = "<!-- bench:results:end -->"


def update_readme(table: str) -> bool:
    """Replace the tables between the bench markers in README.md; False when the markers are missing."""
    text = README.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    README.write_text(text[: start + len(README_START)] + "\n" + table + text[end:], encoding="utf-8")
    return True
