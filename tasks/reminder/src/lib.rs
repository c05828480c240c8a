//! # `builtin:reminder`: the daily progress reminder
//!
//! Mails each user who has open (unreported) items a reminder in Japanese
//! (「本日の進捗リマインダー」), honouring the user's frequency, time zone and
//! quiet hours, and never more than once per user and local day: a retry, a
//! second fire of the beat or a second scheduler cannot mail anyone twice.
//! Meant for a beat at 09:00 Asia/Tokyo on the `email` queue.
//!
//! Needs the grants `kv = {}` and `mail = {}` (with `allowed_senders` if
//! `from` is given), and `http` for the `source` URL's host when the users
//! come from an endpoint.
//!
//! ## Input
//!
//! ```json
//! {
//!   "timezone": "Asia/Tokyo",
//!   "link": "https://intranet.example.com/progress",
//!   "users": [
//!     {
//!       "id": 42,
//!       "email": "taro@example.com",
//!       "name": "山田 太郎",
//!       "frequency": "daily",
//!       "quiet_hours": "22:00-07:00",
//!       "items": [
//!         { "title": "見積書の作成", "due": "2026-11-25", "url": "https://intranet.example.com/tasks/7" },
//!         "議事録の共有"
//!       ]
//!     },
//!     { "id": 43, "email": "jane@example.com", "timezone": "America/New_York",
//!       "frequency": "weekly", "weekday": "mon", "items": ["Q4 plan"] }
//!   ]
//! }
//! ```
//!
//! | field | type | |
//! |---|---|---|
//! | `users` | list | the users and their open items; exactly one of `users` and `source` |
//! | `source` | URL | GET, answering `{"users": [...]}` or `[...]` with the same user records |
//! | `timezone` | IANA name | default `"UTC"`: for users who give none |
//! | `link` | string | optional: where to report, shown in the mail |
//! | `from`, `reply_to` | address | optional; `from` must be allowed by the mail grant |
//! | `now` | RFC 3339 | optional: act as if it were this instant (back-fills, tests); default the clock |
//!
//! A user record:
//!
//! | field | type | |
//! |---|---|---|
//! | `id` | string or number | names the user in the guard key; default the e-mail address |
//! | `email` | string | required |
//! | `name` | string | optional: the mail's greeting and the `To` display name |
//! | `frequency` | `"daily"`, `"weekly"` or `"none"` | default `"daily"`; `"weekly:fri"` is `"weekly"` with `weekday` |
//! | `weekday` | `"mon"` ... `"sun"` (or full English names) | weekly only, default `"mon"`, in the user's time zone |
//! | `timezone` | IANA name | e.g. `"Asia/Tokyo"`, `"America/New_York"` (DST is handled) |
//! | `quiet_hours` | `"HH:MM-HH:MM"` | optional, local; may span midnight (`"22:00-07:00"`) |
//! | `items` | list | open items: a string, or `{"title", "due", "url"}`; a user without any is skipped |
//!
//! Every record is checked before anything is sent; an unknown time zone or
//! a malformed `quiet_hours` fails the job naming the record and field
//! (`users[3].timezone: unknown time zone "Asia/Tokio"`).
//!
//! ## Output
//!
//! ```json
//! {
//!   "now": "2026-11-22T00:00:00Z",
//!   "sent": 1,
//!   "skipped": 1,
//!   "users": [
//!     { "user": "42", "email": "taro@example.com", "local_date": "2026-11-22",
//!       "status": "sent", "message_id": "<...@example.com>" },
//!     { "user": "43", "email": "jane@example.com", "local_date": "2026-11-21",
//!       "status": "skipped", "reason": "not_today",
//!       "detail": "weekly on Monday; it is Saturday there" }
//!   ]
//! }
//! ```
//!
//! Skip reasons: `frequency_none`, `not_today` (weekly, another weekday),
//! `no_items`, `quiet_hours`, `already_sent` (this user was reminded on this
//! local date already).
//!
//! ## Once per user and local day
//!
//! Before sending, the task claims the kv key `remind:<id>:<local date>`
//! with `set-nx` (24 h TTL); a user whose key exists is skipped as
//! `already_sent`. What happens when sending fails:
//!
//! - The mail server refused or could not be reached (`transient`, e.g. 4xx
//!   or a dropped connection): the message was not accepted, so the key is
//!   deleted and the job ends as a *retry* after the other users are done.
//!   The retry skips everyone already mailed (their keys exist) and mails
//!   the rest.
//! - The address or message was refused for good (`invalid`, `permanent`):
//!   the key is deleted too (nothing was sent, so a corrected re-run the same
//!   day may send), the other users are still mailed, and the job *fails*
//!   naming the users it could not mail.
//! - The task is not granted mail, or mail is not configured: the key is
//!   deleted and the job fails at once.
//!
//! The guard prefers a missed reminder to a duplicate: if the run dies
//! between claiming a key and the end of the send (time limit, worker
//! killed), or deleting the key fails, that user gets no reminder that day.
//! The one way to a duplicate is a connection lost after the server accepted
//! the message but before its answer arrived: SMTP gives no way to know.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use runner_sdk::mail::{Address, Message};
use runner_sdk::{Context, HostError, TaskError, http, kv, task};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long a guard key lives: long enough to cover the local day it names.
const GUARD_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    users: Option<Vec<User>>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    link: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    now: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    #[serde(default)]
    id: Option<Value>,
    email: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    frequency: Option<String>,
    #[serde(default)]
    weekday: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    quiet_hours: Option<String>,
    #[serde(default)]
    items: Vec<Item>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Item {
    Title(String),
    Full {
        title: String,
        #[serde(default)]
        due: Option<String>,
        #[serde(default)]
        url: Option<String>,
    },
}

/// What `source` may answer.
#[derive(Deserialize)]
#[serde(untagged)]
enum SourceUsers {
    Wrapped { users: Vec<User> },
    Bare(Vec<User>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frequency {
    Daily,
    Weekly(Weekday),
    None,
}

/// A local time range in minutes of the day; `start > end` spans midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QuietHours {
    start: u32,
    end: u32,
}

impl QuietHours {
    fn parse(text: &str) -> Result<QuietHours, String> {
        let (start, end) = text
            .split_once('-')
            .ok_or_else(|| format!("{text:?} is not a range like \"22:00-07:00\""))?;
        let start = minute_of_day(start.trim(), text)?;
        let end = minute_of_day(end.trim(), text)?;
        if start == end {
            return Err(format!(
                "{text:?} is an empty range (leave `quiet_hours` out for none)"
            ));
        }
        Ok(QuietHours { start, end })
    }

    fn contains(&self, minute: u32) -> bool {
        if self.start < self.end {
            self.start <= minute && minute < self.end
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl fmt::Display for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

fn minute_of_day(hhmm: &str, whole: &str) -> Result<u32, String> {
    let bad = || format!("{whole:?}: {hhmm:?} is not a time like \"07:30\"");
    let (h, m) = hhmm.split_once(':').ok_or_else(bad)?;
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// A user record after checking.
struct Recipient {
    key_id: String,
    address: Address,
    frequency: Frequency,
    tz: Tz,
    quiet: Option<QuietHours>,
    items: Vec<Item>,
}

#[derive(Serialize)]
struct UserReport {
    user: String,
    email: String,
    local_date: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
}

#[derive(Serialize)]
struct Output {
    now: String,
    sent: usize,
    skipped: usize,
    users: Vec<UserReport>,
}

#[task]
fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let now = match input.now.as_deref() {
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| TaskError::fail(format!("now: {text:?} is not an RFC 3339 time: {e}")))?,
        None => DateTime::<Utc>::from(std::time::SystemTime::now()),
    };
    let default_tz = match input.timezone.as_deref() {
        None => Tz::UTC,
        Some(name) => parse_tz(name).map_err(|e| TaskError::fail(format!("timezone: {e}")))?,
    };
    let users = match (input.users, input.source.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(TaskError::fail("give either `users` or `source`, not both"));
        }
        (None, None) => {
            return Err(TaskError::fail(
                "give the users in `users` or a `source` URL to fetch them from",
            ));
        }
        (Some(users), None) => users,
        (None, Some(url)) => {
            ctx.info(format!("fetching the users from {url}"));
            match http::get(url)?
                .error_for_status()?
                .json::<SourceUsers>()
                .map_err(|e| TaskError::fail(format!("{url}: {}", e.message())))?
            {
                SourceUsers::Wrapped { users } | SourceUsers::Bare(users) => users,
            }
        }
    };
    let recipients = users
        .into_iter()
        .enumerate()
        .map(|(i, user)| check_user(user, default_tz).map_err(|e| format!("users[{i}].{e}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(TaskError::fail)?;
    let from = input.from.as_deref().map(Address::from);
    let reply_to = input.reply_to.as_deref().map(Address::from);

    let total = recipients.len() as u64;
    let mut reports = Vec::with_capacity(recipients.len());
    let mut transient = Vec::new();
    let mut permanent = Vec::new();
    for (i, r) in recipients.iter().enumerate() {
        let local = now.with_timezone(&r.tz);
        let date = local.date_naive();
        let mut report = UserReport {
            user: r.key_id.clone(),
            email: r.address.email.clone(),
            local_date: date.format("%Y-%m-%d").to_string(),
            status: "skipped",
            reason: None,
            detail: None,
            message_id: None,
        };
        if let Some((reason, detail)) =
            skip_reason(r, local.weekday(), local.hour() * 60 + local.minute())
        {
            report.reason = Some(reason);
            report.detail = Some(detail);
            reports.push(report);
            continue;
        }

        let key = format!("remind:{}:{}", r.key_id, report.local_date);
        if !kv::set_nx(&key, &ctx.job().id, Some(GUARD_TTL))
            .map_err(|e| TaskError::from(e).context(format!("claiming {key}")))?
        {
            report.reason = Some("already_sent");
            report.detail = Some(format!("already reminded on {}", report.local_date));
            reports.push(report);
            continue;
        }

        let mut message = Message::new()
            .to(r.address.clone())
            .subject(subject(r.frequency, date))
            .text(body(r, date, input.link.as_deref()));
        if let Some(from) = &from {
            message = message.from(from.clone());
        }
        if let Some(reply_to) = &reply_to {
            message = message.reply_to(reply_to.clone());
        }
        match message.send() {
            Ok(id) => {
                ctx.info(format!("reminded {} <{}>", r.key_id, r.address.email));
                report.status = "sent";
                report.message_id = Some(id);
                reports.push(report);
            }
            Err(err) => {
                // Nothing was accepted: free the day's key so that a retry
                // (or a corrected re-run) can send.
                if let Err(e) = kv::delete(&key) {
                    ctx.error(format!(
                        "could not release {key} after a failed send ({e}): {} gets no reminder today",
                        r.key_id
                    ));
                }
                let what = format!("users[{i}] ({}): {err}", r.key_id);
                ctx.warn(format!("not sent: {what}"));
                match err {
                    // Past a soft time limit: the rest go on the next
                    // attempt (the day's keys skip those already sent).
                    HostError::Transient(_) | HostError::TimeUp(_) => transient.push(what),
                    HostError::Denied(_) | HostError::Unavailable(_) => {
                        return Err(TaskError::fail(format!("cannot send mail: {err}")));
                    }
                    HostError::Invalid(_) | HostError::Permanent(_) => permanent.push(what),
                }
            }
        }
        ctx.progress_with(i as u64 + 1, total, format!("{} of {total} users", i + 1));
    }

    let sent = reports.iter().filter(|r| r.status == "sent").count();
    let skipped = reports.iter().filter(|r| r.status == "skipped").count();
    if !transient.is_empty() {
        return Err(TaskError::retry(format!(
            "sent {sent}, skipped {skipped}; to retry: {}",
            transient.join("; ")
        )));
    }
    if !permanent.is_empty() {
        return Err(TaskError::fail(format!(
            "sent {sent}, skipped {skipped}; could not mail: {}",
            permanent.join("; ")
        )));
    }
    Ok(Output {
        now: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        sent,
        skipped,
        users: reports,
    })
}

/// Why this user gets no mail now, if not.
fn skip_reason(r: &Recipient, weekday: Weekday, minute: u32) -> Option<(&'static str, String)> {
    match r.frequency {
        Frequency::None => return Some(("frequency_none", "frequency is none".to_string())),
        Frequency::Weekly(day) if day != weekday => {
            return Some((
                "not_today",
                format!(
                    "weekly on {}; it is {} there",
                    weekday_name(day),
                    weekday_name(weekday)
                ),
            ));
        }
        _ => {}
    }
    if r.items.is_empty() {
        return Some(("no_items", "no open items".to_string()));
    }
    if let Some(quiet) = r.quiet
        && quiet.contains(minute)
    {
        return Some((
            "quiet_hours",
            format!(
                "quiet hours {quiet} ({}, local time {:02}:{:02})",
                r.tz.name(),
                minute / 60,
                minute % 60
            ),
        ));
    }
    None
}

fn check_user(user: User, default_tz: Tz) -> Result<Recipient, String> {
    let email = user.email.trim().to_string();
    if !email.contains('@') {
        return Err(format!("email: {email:?} is not an e-mail address"));
    }
    let key_id = match user.id {
        None | Some(Value::Null) => email.clone(),
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => return Err(format!("id: expected a string or a number, got {other}")),
    };
    let weekday = match user.weekday.as_deref() {
        None => None,
        Some(day) => Some(parse_weekday(day).map_err(|e| format!("weekday: {e}"))?),
    };
    let frequency = match user.frequency.as_deref().map(str::trim) {
        None | Some("daily") => Frequency::Daily,
        Some("none") => Frequency::None,
        Some("weekly") => Frequency::Weekly(weekday.unwrap_or(Weekday::Mon)),
        Some(other) => match other.strip_prefix("weekly:") {
            Some(day) => {
                Frequency::Weekly(parse_weekday(day).map_err(|e| format!("frequency: {e}"))?)
            }
            None => {
                return Err(format!(
                    "frequency: {other:?} is not one of \"daily\", \"weekly\", \"none\""
                ));
            }
        },
    };
    let tz = match user.timezone.as_deref() {
        None => default_tz,
        Some(name) => parse_tz(name).map_err(|e| format!("timezone: {e}"))?,
    };
    let quiet = user
        .quiet_hours
        .as_deref()
        .map(QuietHours::parse)
        .transpose()
        .map_err(|e| format!("quiet_hours: {e}"))?;
    let address = match user.name.filter(|n| !n.trim().is_empty()) {
        Some(name) => Address::named(name.trim(), email),
        None => Address::new(email),
    };
    Ok(Recipient {
        key_id,
        address,
        frequency,
        tz,
        quiet,
        items: user.items,
    })
}

fn parse_tz(name: &str) -> Result<Tz, String> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| format!("unknown time zone {name:?} (use an IANA name like \"Asia/Tokyo\")"))
}

fn parse_weekday(text: &str) -> Result<Weekday, String> {
    text.trim()
        .parse::<Weekday>()
        .map_err(|_| format!("{text:?} is not a weekday (\"mon\" ... \"sun\")"))
}

fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    }
}

/// 「本日の進捗リマインダー（2026年11月22日）」, or 「今週の…」 for weekly users.
fn subject(frequency: Frequency, date: NaiveDate) -> String {
    let when = match frequency {
        Frequency::Weekly(_) => "今週",
        _ => "本日",
    };
    format!(
        "{when}の進捗リマインダー（{}）",
        date.format("%Y年%m月%d日")
    )
}

fn body(r: &Recipient, date: NaiveDate, link: Option<&str>) -> String {
    let name = r.address.name.as_deref().unwrap_or(&r.address.email);
    let when = match r.frequency {
        Frequency::Weekly(_) => "今週",
        _ => "本日",
    };
    let mut text = format!(
        "{name} さん\n\nお疲れさまです。{}時点で、進捗の報告がまだのタスクが {} 件あります。\n{when}の進捗を報告してください。\n\n",
        date.format("%Y年%m月%d日"),
        r.items.len()
    );
    for item in &r.items {
        match item {
            Item::Title(title) => text.push_str(&format!("・{title}\n")),
            Item::Full { title, due, url } => {
                match due {
                    Some(due) => text.push_str(&format!("・{title}（期限: {due}）\n")),
                    None => text.push_str(&format!("・{title}\n")),
                }
                if let Some(url) = url {
                    text.push_str(&format!("  {url}\n"));
                }
            }
        }
    }
    if let Some(link) = link {
        text.push_str(&format!("\n進捗の報告はこちら: {link}\n"));
    }
    text.push_str("\n※ このメールは runner の reminder タスクから自動送信されています。\n");
    text
}
