"""The daily progress reminder, ported from `tasks/reminder` (Rust) to Python.

Mails each user who has open items a reminder in Japanese
(「本日の進捗リマインダー」), honouring the user's frequency, time zone and
quiet hours, and never more than once per user and local day: the kv key
`remind:<id>:<local date>` is claimed with `set_nx` before sending and
released if the mail server did not accept the message.

Needs the grants `kv` and `mail`. Input (as for `builtin:reminder`):

    {"timezone": "Asia/Tokyo", "link": "https://intranet.example.com/progress",
     "now": "2026-11-24T00:00:00Z",
     "users": [{"id": 42, "email": "taro@example.com", "name": "山田 太郎",
                "frequency": "daily", "quiet_hours": "22:00-07:00",
                "items": [{"title": "見積書の作成", "due": "2026-11-25"}, "議事録の共有"]}]}

    runner-task build examples/python/reminder/app.py -r examples/python/reminder/requirements.txt
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo, available_timezones

from runner_task import (
    Denied,
    Fail,
    HostError,
    Retry,
    TimeUp,
    Transient,
    Unavailable,
    context,
    kv,
    mail,
    task,
)

# A component has no files at run time: it holds the interpreter as it was
# after this module was imported, at build time. So every time zone is read
# now, from the bundled `tzdata`, into that snapshot (about 1.8 MB).
ZONES = {name: ZoneInfo(name) for name in available_timezones()}

GUARD_TTL = 24 * 3600
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAY_NAMES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


@dataclass
class Item:
    title: str
    due: str | None = None
    url: str | None = None


@dataclass
class User:
    email: str
    id: str | int | None = None
    name: str | None = None
    frequency: str = "daily"
    weekday: str = "mon"
    timezone: str | None = None
    quiet_hours: str | None = None
    items: list[Item | str] = field(default_factory=list)


@dataclass
class Input:
    users: list[User]
    timezone: str = "UTC"
    link: str | None = None
    now: str | None = None


@dataclass
class UserReport:
    user: str
    email: str
    local_date: str
    status: str
    reason: str | None = None
    detail: str | None = None
    message_id: str | None = None


@dataclass
class Output:
    now: str
    sent: int
    skipped: int
    users: list[UserReport]


def zone(name: str, where: str) -> ZoneInfo:
    found = ZONES.get(name.strip())
    if found is None:
        raise Fail(f'{where}: unknown time zone "{name}" (use an IANA name like "Asia/Tokyo")')
    return found


def minute_of_day(hhmm: str, where: str) -> int:
    try:
        h, m = (int(x) for x in hhmm.strip().split(":"))
    except ValueError:
        raise Fail(f'{where}: "{hhmm}" is not a time like "07:30"') from None
    if m > 59 or h > 24 or (h == 24 and m):
        raise Fail(f'{where}: "{hhmm}" is not a time like "07:30"')
    return h * 60 + m


def quiet(text: str | None, where: str) -> tuple[int, int] | None:
    if text is None:
        return None
    if "-" not in text:
        raise Fail(f'{where}: "{text}" is not a range like "22:00-07:00"')
    start, end = text.split("-", 1)
    return minute_of_day(start, where), minute_of_day(end, where)


def in_range(r: tuple[int, int], minute: int) -> bool:
    start, end = r
    return start <= minute < end if start < end else minute >= start or minute < end


def subject(weekly: bool, d: date) -> str:
    when = "今週" if weekly else "本日"
    return f"{when}の進捗リマインダー（{d.year}年{d.month:02}月{d.day:02}日）"


def body(name: str, items: list[Item | str], weekly: bool, d: date, link: str | None) -> str:
    when = "今週" if weekly else "本日"
    lines = [
        f"{name} さん",
        "",
        f"お疲れさまです。{d.year}年{d.month:02}月{d.day:02}日時点で、"
        f"進捗の報告がまだのタスクが {len(items)} 件あります。",
        f"{when}の進捗を報告してください。",
        "",
    ]
    for item in items:
        if isinstance(item, str):
            lines.append(f"・{item}")
        else:
            lines.append(f"・{item.title}（期限: {item.due}）" if item.due else f"・{item.title}")
            if item.url:
                lines.append(f"  {item.url}")
    if link:
        lines += ["", f"報告はこちら: {link}"]
    return "\n".join(lines) + "\n"


@task(needs=["kv", "mail"])
def remind(input: Input) -> Output:
    now = datetime.now(timezone.utc)
    if input.now is not None:
        try:
            now = datetime.fromisoformat(input.now.replace("Z", "+00:00")).astimezone(timezone.utc)
        except ValueError as e:
            raise Fail(f"now: {input.now!r} is not an RFC 3339 time: {e}") from None
    default_tz = zone(input.timezone, "timezone")

    reports: list[UserReport] = []
    transient: list[str] = []
    permanent: list[str] = []
    for i, u in enumerate(input.users):
        where = f"users[{i}]"
        if "@" not in u.email:
            raise Fail(f'{where}.email: "{u.email}" is not an e-mail address')
        key_id = str(u.id) if u.id is not None else u.email
        tz = zone(u.timezone, f"{where}.timezone") if u.timezone else default_tz
        frequency, _, day = u.frequency.partition(":")
        if frequency not in ("daily", "weekly", "none"):
            raise Fail(f'{where}.frequency: "{u.frequency}" is not one of "daily", "weekly", "none"')
        weekday = (day or u.weekday).strip().lower()[:3]
        if weekday not in WEEKDAYS:
            raise Fail(f'{where}.weekday: "{day or u.weekday}" is not a weekday ("mon" ... "sun")')
        hours = quiet(u.quiet_hours, f"{where}.quiet_hours")

        local = now.astimezone(tz)
        report = UserReport(key_id, u.email, local.date().isoformat(), "skipped")
        reports.append(report)
        minute = local.hour * 60 + local.minute
        if frequency == "none":
            report.reason, report.detail = "frequency_none", "frequency is none"
            continue
        if frequency == "weekly" and WEEKDAYS.index(weekday) != local.weekday():
            report.reason = "not_today"
            report.detail = (
                f"weekly on {WEEKDAY_NAMES[WEEKDAYS.index(weekday)]}; "
                f"it is {WEEKDAY_NAMES[local.weekday()]} there"
            )
            continue
        if not u.items:
            report.reason, report.detail = "no_items", "no open items"
            continue
        if hours is not None and in_range(hours, minute):
            report.reason = "quiet_hours"
            report.detail = f"quiet hours {u.quiet_hours} (local time {local:%H:%M})"
            continue

        key = f"remind:{key_id}:{report.local_date}"
        if not kv.set_nx(key, context.job().id, ttl=GUARD_TTL):
            report.reason, report.detail = "already_sent", f"already reminded on {report.local_date}"
            continue
        name = (u.name or "").strip()
        try:
            report.message_id = mail.send(
                to=mail.Address(u.email, name or None),
                subject=subject(frequency == "weekly", local.date()),
                text=body(name or u.email, u.items, frequency == "weekly", local.date(), input.link),
            )
            report.status = "sent"
            context.info(f"reminded {key_id} <{u.email}>")
        except HostError as err:
            # Nothing was accepted: free the day's key so a retry can send.
            kv.delete(key)
            what = f"{where} ({key_id}): {err}"
            context.warn(f"not sent: {what}")
            if isinstance(err, (Transient, TimeUp)):
                transient.append(what)  # the next attempt sends the rest
            elif isinstance(err, (Denied, Unavailable)):
                raise Fail(f"cannot send mail: {err}") from None
            else:
                permanent.append(what)
        context.progress(i + 1, len(input.users), f"{i + 1} of {len(input.users)} users")

    sent = sum(r.status == "sent" for r in reports)
    skipped = len(reports) - sent
    if transient:
        raise Retry(f"sent {sent}, skipped {skipped}; to retry: {'; '.join(transient)}")
    if permanent:
        raise Fail(f"sent {sent}, skipped {skipped}; could not mail: {'; '.join(permanent)}")
    return Output(now.strftime("%Y-%m-%dT%H:%M:%SZ"), sent, skipped, reports)
