"""Renders documents to PDF. Needs `"pdf"`. Text is always literal, and
Japanese renders.

    data = pdf.render("週報", [pdf.Heading("売上"), pdf.Table([["りんご", "120"]], header=["品目", "円"])])
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ._host import call


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 1
    """1 (largest) to 4."""


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    """Rows of cells, under an optional header. A cell is a `str`; an `int`,
    `float`, `bool` or `Decimal` is written as its `str()`, and any other
    value is a `TypeError` when the document is rendered."""

    rows: Sequence[Sequence[str | int | float]]
    header: Sequence[str | int | float] = field(default_factory=tuple)


@dataclass(frozen=True)
class KeyValues:
    """A two-column list of labels and values ("Total: 42"). As in a
    `Table`, an `int`, `float`, `bool` or `Decimal` label or value is
    written as its `str()`."""

    pairs: Sequence[tuple[str | int | float, str | int | float]]


@dataclass(frozen=True)
class PageBreak:
    pass


Block = Heading | Paragraph | Table | KeyValues | PageBreak


@dataclass(frozen=True)
class _Cells:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class _Pairs:
    pairs: list[tuple[str, str]]


def _text(value: object, where: str) -> str:
    """A cell, label or value as the text the host takes."""
    if isinstance(value, str):
        return value
    # bool is an int. A Decimal exists only if the task imported `decimal`
    # (not imported here: the module is large).
    decimal = sys.modules.get("decimal")
    if isinstance(value, (int, float)) or (
        decimal is not None and isinstance(value, decimal.Decimal)
    ):
        return str(value)
    raise TypeError(
        f"{where} is a {type(value).__name__}; "
        f"it must be a str, int, float, bool or Decimal"
    )


def _str(value: object, where: str, *, optional: bool = False) -> None:
    """A text field (a heading's or paragraph's text, the title, the
    author): a `str`, not converted. Anything else is a `TypeError`."""
    if isinstance(value, str) or (optional and value is None):
        return
    expected = "a str or None" if optional else "a str"
    raise TypeError(f"{where} is a {type(value).__name__}; it must be {expected}")


_Checked = Heading | Paragraph | _Cells | _Pairs | PageBreak


def _checked(blocks: Iterable[Block | str]) -> list[_Checked]:
    """The blocks as the host takes them: cells, labels and values as text.
    A value that cannot be is a `TypeError` naming where it is
    (`blocks[2].rows[0][1]`, `blocks[0].text`), raised before anything is
    sent. Headings' and paragraphs' text must be a `str`, a heading's level
    an `int` (not a `bool`) from 1 to 4."""
    out: list[_Checked] = []
    for i, b in enumerate(blocks):
        where = f"blocks[{i}]"
        if isinstance(b, str):
            out.append(Paragraph(b))
        elif isinstance(b, Heading):
            _str(b.text, f"{where}.text")
            level: object = b.level
            if not isinstance(level, int) or isinstance(level, bool):
                raise TypeError(
                    f"{where}.level is a {type(level).__name__}; it must be an int from 1 to 4"
                )
            if not 1 <= level <= 4:
                raise ValueError(f"{where}.level is 1 to 4, not {level}")
            out.append(b)
        elif isinstance(b, Paragraph):
            _str(b.text, f"{where}.text")
            out.append(b)
        elif isinstance(b, PageBreak):
            out.append(b)
        elif isinstance(b, Table):
            header = [_text(c, f"{where}.header[{j}]") for j, c in enumerate(b.header)]
            rows = [
                [_text(c, f"{where}.rows[{r}][{j}]") for j, c in enumerate(row)]
                for r, row in enumerate(b.rows)
            ]
            out.append(_Cells(header, rows))
        elif isinstance(b, KeyValues):
            pairs = [
                (_text(k, f"{where}.pairs[{r}][0]"), _text(v, f"{where}.pairs[{r}][1]"))
                for r, (k, v) in enumerate(b.pairs)
            ]
            out.append(_Pairs(pairs))
        else:
            raise TypeError(
                f"{where} is a {type(b).__name__}; a block is a Heading, Paragraph, "
                f"Table, KeyValues, PageBreak or str"
            )
    return out


def render(
    title: str,
    blocks: Iterable[Block | str],
    *,
    author: str | None = None,
    paper: str = "a4",
    landscape: bool = False,
) -> bytes:
    """Renders a document (a `str` block is a paragraph); returns the PDF's
    bytes. `paper` is "a4" or "letter". `title`, `author` (or None) and
    `paper` are `str`s and `landscape` a `bool`: another type is a
    `TypeError`, raised before anything is sent, as in the blocks."""
    _str(title, "title")
    _str(author, "author", optional=True)
    _str(paper, "paper")
    if paper not in ("a4", "letter"):
        raise ValueError(f'paper must be "a4" or "letter", not {paper!r}')
    if not isinstance(landscape, bool):
        raise TypeError(f"landscape is a {type(landscape).__name__}; it must be a bool")
    checked = _checked(blocks)
    with call("pdf", "render"):
        from wit_world.imports import pdf as wit

        out: list[wit.Block] = []
        for b in checked:
            if isinstance(b, Heading):
                out.append(wit.Block_Heading(wit.Heading(level=b.level, text=b.text)))
            elif isinstance(b, Paragraph):
                out.append(wit.Block_Paragraph(b.text))
            elif isinstance(b, _Cells):
                out.append(wit.Block_Table(wit.Table(header=b.header, rows=b.rows)))
            elif isinstance(b, _Pairs):
                out.append(wit.Block_KeyValues(b.pairs))
            else:
                out.append(wit.Block_PageBreak())
        doc = wit.Document(
            title=title,
            author=author,
            paper=wit.Paper.A4 if paper == "a4" else wit.Paper.LETTER,
            landscape=landscape,
            blocks=out,
        )
        return bytes(wit.render(doc))
