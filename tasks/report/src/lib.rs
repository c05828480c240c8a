//! # `builtin:report`: a daily or monthly PDF report
//!
//! Takes the report's figures from its input (or fetches them from a
//! granted HTTP endpoint), renders them to PDF (Japanese text renders),
//! saves the file under a files root (`daily/2026-11-22.pdf`,
//! `monthly/2026-10.pdf`) and mails it as an attachment to a list of
//! recipients. Meant for daily and monthly beats on the `reports` queue.
//!
//! Needs the grants `pdf = true`, `files = { reports = "read-write" }` (or
//! the root named in `root`), `mail` when there are recipients, and `http`
//! for the `source` URL's host when there is one.
//!
//! ## Input
//!
//! ```json
//! {
//!   "kind": "daily",
//!   "timezone": "Asia/Tokyo",
//!   "title": "日次業務レポート",
//!   "data": {
//!     "summary": { "処理件数": 128, "失敗": 2 },
//!     "tables": [
//!       { "heading": "部署別", "columns": ["部署", "件数"],
//!         "rows": [["営業部", 80], ["経理部", 48]] }
//!     ],
//!     "notes": ["失敗した 2 件は翌日に再処理します。"]
//!   },
//!   "recipients": ["経理部 <keiri@example.com>"]
//! }
//! ```
//!
//! | field | type | |
//! |---|---|---|
//! | `kind` | `"daily"` or `"monthly"` | default `"daily"` |
//! | `period` | string | `"2026-11-22"` (daily) or `"2026-11"` (monthly); default below |
//! | `timezone` | IANA name | default `"UTC"`: the zone in which "today" is taken |
//! | `title` | string | default 「日次レポート」 / 「月次レポート」 |
//! | `data` | object | the figures (below); exactly one of `data` and `source` |
//! | `source` | URL | GET, answering the `data` object as JSON; `{period}` in it is replaced |
//! | `root` | string | files root, default `"reports"` |
//! | `path` | string | default `"daily/{period}.pdf"` / `"monthly/{period}.pdf"`; `{period}` is replaced |
//! | `recipients` | list of addresses | `"a@example.com"` or `"Name <a@example.com>"`; empty: no mail |
//! | `subject` | string | default `"<title>（<period>）"` |
//!
//! The default period is the day of the run for `daily` and the month
//! before the run for `monthly` (a monthly beat fires on the 1st), both in
//! `timezone`. The run's time is the beat's due time when a beat fired the
//! job, otherwise the clock.
//!
//! `data`: `summary` (an object: label -> value, shown as a key-value block,
//! in the order given), `tables` (each `heading`, `columns`, `rows`; a cell is
//! a string, a number or `null`) and `notes` (a string or a list of
//! paragraphs). All optional.
//!
//! ## Output
//!
//! ```json
//! { "kind": "daily", "period": "2026-11-22", "root": "reports",
//!   "path": "daily/2026-11-22.pdf", "bytes": 48213,
//!   "recipients": ["keiri@example.com"], "message_id": "<...>" }
//! ```
//!
//! A transient failure (the source, the mail server) is a retry; the retry
//! renders and saves the file again (the same path, replaced) and sends the
//! mail that was not sent.

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use chrono_tz::Tz;
use runner_sdk::mail::{Address, Message};
use runner_sdk::pdf::Document;
use runner_sdk::{Context, TaskError, files, http, task};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Deserialize, Serialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    Daily,
    Monthly,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    kind: Kind,
    #[serde(default)]
    period: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    root: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    recipients: Vec<String>,
    #[serde(default)]
    subject: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Data {
    #[serde(default)]
    summary: Map<String, Value>,
    #[serde(default)]
    tables: Vec<Table>,
    #[serde(default)]
    notes: Notes,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    #[serde(default)]
    heading: Option<String>,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    rows: Vec<Vec<Value>>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Notes {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Serialize)]
struct Output {
    kind: Kind,
    period: String,
    root: String,
    path: String,
    bytes: usize,
    recipients: Vec<String>,
    message_id: Option<String>,
}

#[task]
fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let tz: Tz = match input.timezone.as_deref() {
        None => Tz::UTC,
        Some(name) => name
            .parse()
            .map_err(|_| TaskError::fail(format!("timezone: unknown time zone {name:?}")))?,
    };
    let period = match &input.period {
        Some(p) => check_period(input.kind, p)?,
        None => default_period(input.kind, run_time(ctx)?.with_timezone(&tz).date_naive()),
    };
    let recipients: Vec<Address> = input.recipients.iter().map(Address::from).collect();
    if let Some(i) = recipients.iter().position(|a| !a.email.contains('@')) {
        return Err(TaskError::fail(format!(
            "recipients[{i}]: {:?} is not an e-mail address",
            input.recipients[i]
        )));
    }

    let data = match (input.data, input.source.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(TaskError::fail("give either `data` or `source`, not both"));
        }
        (None, None) => {
            return Err(TaskError::fail(
                "give the report's figures in `data` or a `source` URL to fetch them from",
            ));
        }
        (Some(data), None) => data,
        (None, Some(source)) => {
            let url = source.replace("{period}", &period);
            ctx.info(format!("fetching the figures from {url}"));
            http::get(&url)?
                .error_for_status()?
                .json::<Data>()
                .map_err(|e| TaskError::fail(format!("{url}: {}", e.message())))?
        }
    };
    check_tables(&data.tables)?;

    let title = input.title.unwrap_or_else(|| {
        match input.kind {
            Kind::Daily => "日次レポート",
            Kind::Monthly => "月次レポート",
        }
        .to_string()
    });
    let pdf = render(&title, input.kind, &period, &data)?;
    ctx.progress_with(1, 3, format!("rendered {} bytes", pdf.len()));

    let root = input.root.unwrap_or_else(|| "reports".to_string());
    let path = input
        .path
        .unwrap_or_else(|| match input.kind {
            Kind::Daily => "daily/{period}.pdf".to_string(),
            Kind::Monthly => "monthly/{period}.pdf".to_string(),
        })
        .replace("{period}", &period);
    files::write(&root, &path, &pdf)
        .map_err(|e| TaskError::from(e).context(format!("saving {root}:{path}")))?;
    ctx.progress_with(2, 3, format!("saved {root}:{path}"));

    let message_id = if recipients.is_empty() {
        None
    } else {
        let filename = path.rsplit('/').next().unwrap_or(&path).to_string();
        let subject = input
            .subject
            .unwrap_or_else(|| format!("{title}（{period}）"));
        let message = recipients
            .iter()
            .cloned()
            .fold(Message::new(), |m, to| m.to(to))
            .subject(subject)
            .text(mail_body(&title, &period, &data, &filename))
            .attach(filename, "application/pdf", pdf.clone());
        let id = message
            .send()
            .map_err(|e| TaskError::from(e).context("mailing the report"))?;
        ctx.info(format!("mailed to {} recipients", recipients.len()));
        Some(id)
    };
    ctx.progress_with(3, 3, "done");

    Ok(Output {
        kind: input.kind,
        period,
        root,
        path,
        bytes: pdf.len(),
        recipients: recipients.into_iter().map(|a| a.email).collect(),
        message_id,
    })
}

/// The beat's due time when a beat fired this job, else the clock.
fn run_time(ctx: &Context) -> Result<DateTime<Utc>, TaskError> {
    match ctx.job().scheduled_for.as_deref() {
        Some(due) => DateTime::parse_from_rfc3339(due)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| TaskError::fail(format!("the job's due time {due:?}: {e}"))),
        None => Ok(DateTime::<Utc>::from(std::time::SystemTime::now())),
    }
}

fn default_period(kind: Kind, today: NaiveDate) -> String {
    match kind {
        Kind::Daily => today.format("%Y-%m-%d").to_string(),
        Kind::Monthly => {
            let last_month = today
                .with_day(1)
                .and_then(|d| d.checked_sub_months(Months::new(1)))
                .unwrap_or(today);
            last_month.format("%Y-%m").to_string()
        }
    }
}

/// `period` if it is a date of `kind`'s form exactly as written: it names
/// the file and fills the source URL, so `2026-1-5` or ` 2026-01-05` (which
/// chrono reads) would name another file than the report's.
fn check_period(kind: Kind, period: &str) -> Result<String, TaskError> {
    let canonical = match kind {
        Kind::Daily => NaiveDate::parse_from_str(period, "%Y-%m-%d")
            .map(|d| d.format("%Y-%m-%d").to_string()),
        Kind::Monthly => NaiveDate::parse_from_str(&format!("{period}-01"), "%Y-%m-%d")
            .map(|d| d.format("%Y-%m").to_string()),
    };
    if canonical.is_ok_and(|c| c == period) {
        Ok(period.to_string())
    } else {
        let form = match kind {
            Kind::Daily => "YYYY-MM-DD",
            Kind::Monthly => "YYYY-MM",
        };
        Err(TaskError::fail(format!(
            "period: {period:?} is not a {form} date"
        )))
    }
}

fn check_tables(tables: &[Table]) -> Result<(), TaskError> {
    for (t, table) in tables.iter().enumerate() {
        if table.columns.is_empty() {
            continue;
        }
        for (r, row) in table.rows.iter().enumerate() {
            if row.len() != table.columns.len() {
                return Err(TaskError::fail(format!(
                    "tables[{t}].rows[{r}] has {} cells but there are {} columns",
                    row.len(),
                    table.columns.len()
                )));
            }
        }
    }
    Ok(())
}

fn render(title: &str, kind: Kind, period: &str, data: &Data) -> Result<Vec<u8>, TaskError> {
    let period_label = match kind {
        Kind::Daily => "対象日",
        Kind::Monthly => "対象月",
    };
    let mut doc = Document::new(title)
        .author("runner builtin:report")
        .key_values([(period_label, period)]);
    if !data.summary.is_empty() {
        doc = doc
            .heading(2, "概要")
            .key_values(data.summary.iter().map(|(k, v)| (k.clone(), cell_text(v))));
    }
    for table in &data.tables {
        if let Some(heading) = &table.heading {
            doc = doc.heading(2, heading.clone());
        }
        let rows: Vec<Vec<String>> = table
            .rows
            .iter()
            .map(|row| row.iter().map(cell_text).collect())
            .collect();
        doc = doc.table(table.columns.clone(), rows);
    }
    let notes: &[String] = match &data.notes {
        Notes::None => &[],
        Notes::One(note) => std::slice::from_ref(note),
        Notes::Many(notes) => notes,
    };
    if !notes.is_empty() {
        doc = doc.heading(2, "備考");
        for note in notes {
            doc = doc.paragraph(note.clone());
        }
    }
    Ok(doc
        .render()
        .map_err(|e| TaskError::from(e).context("rendering the PDF"))?)
}

fn mail_body(title: &str, period: &str, data: &Data, filename: &str) -> String {
    let mut body = format!("{title}（{period}）を添付します（{filename}）。\n");
    if !data.summary.is_empty() {
        body.push_str("\n概要:\n");
        for (k, v) in &data.summary {
            body.push_str(&format!("  {k}: {}\n", cell_text(v)));
        }
    }
    body.push_str("\nこのメールは runner の report タスクから自動送信されています。\n");
    body
}

/// A cell as shown: strings as they are, `null` empty, anything else as JSON.
fn cell_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
