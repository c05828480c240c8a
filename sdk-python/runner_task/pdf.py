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


_Checked = Heading | Paragraph | _Cells | _Pairs | PageBreak


def _checked(blocks: Iterable[Block | str]) -> list[_Checked]:
    """The blocks as the host takes them: cells, labels and values as text.
    A value that cannot be is a `TypeError` naming where it is
    (`blocks[2].rows[0][1]`), raised before anything is sent."""
    out: list[_Checked] = []
    for i, b in enumerate(blocks):
        where = f"blocks[{i}]"
        if isinstance(b, str):
            out.append(Paragraph(b))
        elif isinstance(b, Heading):
            if not 1 <= b.level <= 4:
                raise ValueError(f"a heading's level is 1 to 4, not {b.level}")
            out.append(b)
        elif isinstance(b, (Paragraph, PageBreak)):
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
    bytes. `paper` is "a4" or "letter"."""
    if paper not in ("a4", "letter"):
        raise ValueError(f'paper must be "a4" or "letter", not {paper!r}')
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
