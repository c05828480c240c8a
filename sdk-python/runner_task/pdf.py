"""Renders documents to PDF. Needs `"pdf"`. Text is always literal, and
Japanese renders.

    data = pdf.render("週報", [pdf.Heading("売上"), pdf.Table([["りんご", "120"]], header=["品目", "円"])])
"""

from __future__ import annotations

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
    rows: Sequence[Sequence[str]]
    header: Sequence[str] = field(default_factory=tuple)


@dataclass(frozen=True)
class KeyValues:
    """A two-column list of labels and values ("Total: 42")."""

    pairs: Sequence[tuple[str, str]]


@dataclass(frozen=True)
class PageBreak:
    pass


Block = Heading | Paragraph | Table | KeyValues | PageBreak


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
    with call("pdf", "render"):
        from wit_world.imports import pdf as wit

        out: list[wit.Block] = []
        for b in blocks:
            if isinstance(b, str):
                out.append(wit.Block_Paragraph(b))
            elif isinstance(b, Heading):
                if not 1 <= b.level <= 4:
                    raise ValueError(f"a heading's level is 1 to 4, not {b.level}")
                out.append(wit.Block_Heading(wit.Heading(level=b.level, text=b.text)))
            elif isinstance(b, Paragraph):
                out.append(wit.Block_Paragraph(b.text))
            elif isinstance(b, Table):
                out.append(
                    wit.Block_Table(
                        wit.Table(header=list(b.header), rows=[list(r) for r in b.rows])
                    )
                )
            elif isinstance(b, KeyValues):
                out.append(wit.Block_KeyValues([(k, v) for k, v in b.pairs]))
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
