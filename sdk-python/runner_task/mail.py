"""E-mail over the operator's SMTP server. Needs `"mail"`.

    mail.send(to="山田 太郎 <taro@example.com>", subject="本日の進捗", text="...")

Non-ASCII names and subjects are encoded (RFC 2047) by the host.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._host import call, to_bytes


@dataclass(frozen=True)
class Address:
    """A mailbox: `name <email>`."""

    email: str
    name: str | None = None

    @staticmethod
    def parse(text: str) -> Address:
        """Reads `email` or `Name <email>` (the name may be quoted). The host
        checks the address itself."""
        text = text.strip()
        open_ = text.rfind("<")
        if open_ >= 0 and text.endswith(">"):
            name = text[:open_].strip().strip('"').strip()
            return Address(text[open_ + 1 : -1].strip(), name or None)
        return Address(text)


@dataclass(frozen=True)
class Attachment:
    """A file attached to the message."""

    filename: str
    content_type: str
    data: bytes


Recipient = Address | str
Recipients = Recipient | Iterable[Recipient]


def _address(a: Recipient) -> Address:
    return a if isinstance(a, Address) else Address.parse(a)


def _addresses(a: Recipients) -> list[Address]:
    if isinstance(a, (Address, str)):
        return [_address(a)]
    return [_address(x) for x in a]


def send(
    *,
    to: Recipients,
    subject: str,
    text: str | None = None,
    html: str | None = None,
    cc: Recipients = (),
    bcc: Recipients = (),
    from_: Recipient | None = None,
    reply_to: Recipient | None = None,
    attachments: Iterable[Attachment] = (),
) -> str:
    """Sends a message; returns its Message-ID. At least one of `text` and
    `html` is needed; with both the message is multipart/alternative. Without
    `from_` the operator's sender is used; with it, the grant must allow it.

    Raises `Denied` (no grant, sender not allowed), `Invalid` (bad address,
    no recipient, no body), `Transient` (connection failure, SMTP 4xx) or
    `Permanent` (SMTP 5xx)."""
    with call("mail", "send"):
        from wit_world.imports import mail as wit

        def conv(a: Address) -> wit.Address:
            return wit.Address(email=a.email, name=a.name)

        message = wit.Message(
            to=[conv(a) for a in _addresses(to)],
            cc=[conv(a) for a in _addresses(cc)],
            bcc=[conv(a) for a in _addresses(bcc)],
            from_=None if from_ is None else conv(_address(from_)),
            reply_to=None if reply_to is None else conv(_address(reply_to)),
            subject=subject,
            text=text,
            html=html,
            attachments=[
                wit.Attachment(
                    filename=a.filename, content_type=a.content_type, data=to_bytes(a.data)
                )
                for a in attachments
            ],
        )
        return wit.send(message)
