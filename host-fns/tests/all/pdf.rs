//! PDF rendering checked with poppler's `pdftotext`, `pdffonts` and
//! `pdfinfo` (Debian package poppler-utils); Japanese needs a CJK font
//! (fonts-noto-cjk or fonts-ipaexfont-gothic).

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use runner_host_fns::HostError;
use runner_host_fns::pdf::{Block, Document, Paper, PdfConfig, PdfService};

/// Indexing the system fonts once per test process is enough.
fn service() -> &'static PdfService {
    static SERVICE: OnceLock<PdfService> = OnceLock::new();
    SERVICE.get_or_init(|| PdfService::new(&PdfConfig::default()))
}

fn poppler(tool: &str, pdf: &[u8], extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("doc.pdf");
    std::fs::write(&path, pdf).expect("write pdf");
    let out = Command::new(tool)
        .args(extra)
        .arg(Path::new(&path))
        .args(if tool == "pdftotext" {
            vec!["-"]
        } else {
            vec![]
        })
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} must be installed (apt-get install poppler-utils): {e}")
        });
    assert!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

fn report() -> Document {
    let rows: Vec<Vec<String>> = (1..=50)
        .map(|i| {
            vec![
                format!("srv{i:02}"),
                format!("{}GB", i * 7),
                format!("ok{i}"),
            ]
        })
        .collect();
    Document {
        title: "月次バックアップ報告書".to_owned(),
        author: Some("運用チーム".to_owned()),
        paper: Paper::A4,
        landscape: false,
        blocks: vec![
            Block::Heading {
                level: 1,
                text: "検証結果の概要".to_owned(),
            },
            Block::Paragraph("すべてのバックアップが正常に検証されました。".to_owned()),
            Block::KeyValues(vec![
                ("対象サーバー".to_owned(), "50台".to_owned()),
                ("Total".to_owned(), "8925GB".to_owned()),
            ]),
            Block::Heading {
                level: 2,
                text: "Servers".to_owned(),
            },
            Block::Table {
                header: vec!["ホスト".to_owned(), "Size".to_owned(), "Status".to_owned()],
                rows,
            },
            Block::PageBreak,
            Block::Paragraph("End of report.".to_owned()),
        ],
    }
}

#[tokio::test]
async fn japanese_report_with_a_large_table() {
    let pdf = service().render(&report()).await.expect("render");
    assert!(pdf.starts_with(b"%PDF-"));
    let text = poppler("pdftotext", &pdf, &["-layout"]);
    let flat = squash(&text);
    for expected in [
        "月次バックアップ報告書",
        "検証結果の概要",
        "すべてのバックアップが正常に検証されました。",
        "対象サーバー",
        "50台",
        "ホスト",
        "End of report.",
    ] {
        assert!(
            flat.contains(&squash(expected)),
            "'{expected}' missing from:\n{text}"
        );
    }
    let tokens: HashSet<&str> = text.split_whitespace().collect();
    for i in 1..=50 {
        for cell in [
            format!("srv{i:02}"),
            format!("{}GB", i * 7),
            format!("ok{i}"),
        ] {
            assert!(
                tokens.contains(cell.as_str()),
                "cell '{cell}' missing from:\n{text}"
            );
        }
    }

    // Fonts are embedded and subset.
    let fonts = poppler("pdffonts", &pdf, &[]);
    let rows: Vec<&str> = fonts.lines().skip(2).collect();
    assert!(!rows.is_empty(), "{fonts}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        // name type [encoding] emb sub uni object ID: the three yes/no columns
        // sit before the last two.
        let flags = &cols[cols.len() - 5..cols.len() - 2];
        assert_eq!(flags[0], "yes", "font not embedded: {row}");
        assert_eq!(flags[1], "yes", "font not subset: {row}");
    }

    let info = poppler("pdfinfo", &pdf, &[]);
    assert!(
        info.contains("月次バックアップ報告書"),
        "title metadata:\n{info}"
    );
    assert!(info.contains("運用チーム"), "author metadata:\n{info}");
    assert!(info.contains("(A4)"), "{info}");
    let pages: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("page count");
    assert!(pages >= 3, "50 rows and a page break span pages: {pages}");
}

#[tokio::test]
async fn hostile_strings_stay_literal_text() {
    let hostile = [
        r#"#panic("x")"#,
        r#"#read("/etc/passwd")"#,
        r#"#let x = 1; #x"#,
        r#"back\slash \\ double \n not-a-newline \u{41}"#,
        r#"*bold* _emph_ $x^2$ `raw` <label> @ref [bracket] ]"#,
        r#"= Heading? - list + enum / term: // comment /* block */"#,
        r#"#set text(fill: red) #show: none"#,
        r#"{ "json": "lookalike" } ""quoted"" ~ nbsp"#,
    ];
    let doc = Document {
        title: r#"#panic("title")"#.to_owned(),
        author: Some(r#"#read("/etc/hostname")"#.to_owned()),
        paper: Paper::Letter,
        landscape: true,
        blocks: vec![
            Block::Heading {
                level: 1,
                text: hostile[0].to_owned(),
            },
            Block::Paragraph(hostile.join("\n")),
            Block::Table {
                header: vec![hostile[1].to_owned(), hostile[2].to_owned()],
                rows: vec![vec![hostile[3].to_owned(), hostile[4].to_owned()]],
            },
            Block::KeyValues(vec![(hostile[5].to_owned(), hostile[6].to_owned())]),
            Block::Paragraph(hostile[7].to_owned()),
        ],
    };
    let pdf = service()
        .render(&doc)
        .await
        .expect("hostile text renders as text");
    let text = poppler("pdftotext", &pdf, &[]);
    let flat = squash(&text);
    assert!(flat.contains(&squash(r#"#panic("title")"#)), "{text}");
    for s in hostile {
        assert!(
            flat.contains(&squash(s)),
            "'{s}' not shown literally in:\n{text}"
        );
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if let Some(first) = passwd.lines().next() {
        assert!(!text.contains(first), "/etc/passwd leaked into the PDF");
    }
    let info = poppler("pdfinfo", &pdf, &[]);
    assert!(info.contains("792 x 612"), "landscape letter: {info}");
}

#[tokio::test]
async fn missing_cjk_font_is_a_clear_error() {
    // No font directories: only typst's own fonts, none of them CJK.
    let bare = PdfService::new(&PdfConfig {
        font_dirs: vec![],
        ..Default::default()
    });
    let err = bare.render(&report()).await.expect_err("no CJK font");
    assert!(
        matches!(err, HostError::Unavailable(ref m) if m.contains("fonts-noto-cjk")),
        "{err}"
    );
    // Latin text still renders.
    let doc = Document {
        title: "Weekly summary".to_owned(),
        blocks: vec![Block::Paragraph("All good.".to_owned())],
        ..Default::default()
    };
    let pdf = bare.render(&doc).await.expect("latin renders");
    assert!(squash(&poppler("pdftotext", &pdf, &[])).contains("Allgood."));
}

#[tokio::test]
async fn bad_documents_are_invalid() {
    let doc = Document {
        title: "x".to_owned(),
        blocks: vec![Block::Heading {
            level: 7,
            text: "too deep".to_owned(),
        }],
        ..Default::default()
    };
    assert!(matches!(
        service().render(&doc).await,
        Err(HostError::Invalid(_))
    ));
    // Ragged rows and an empty table are fine.
    let doc = Document {
        title: "ragged".to_owned(),
        blocks: vec![
            Block::Table {
                header: vec![],
                rows: vec![
                    vec!["a".to_owned()],
                    vec!["b".to_owned(), "c".to_owned(), "d".to_owned()],
                ],
            },
            Block::Table {
                header: vec![],
                rows: vec![],
            },
        ],
        ..Default::default()
    };
    let pdf = service().render(&doc).await.expect("ragged table");
    let tokens: Vec<String> = poppler("pdftotext", &pdf, &[])
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for cell in ["a", "b", "c", "d"] {
        assert!(tokens.iter().any(|t| t == cell), "{cell}: {tokens:?}");
    }
}

/// Blocks, table rows and columns, key-value pairs and text are counted
/// before typst sees the document.
#[tokio::test]
async fn oversized_documents_are_invalid_and_say_what_is_too_big() {
    let cases: Vec<(&str, Document)> = vec![
        (
            "blocks",
            Document {
                title: "many blocks".to_owned(),
                blocks: vec![Block::PageBreak; 10_001],
                ..Default::default()
            },
        ),
        (
            "rows",
            Document {
                title: "many empty rows".to_owned(),
                blocks: vec![Block::Table {
                    header: vec![],
                    rows: vec![vec![]; 50_001],
                }],
                ..Default::default()
            },
        ),
        (
            "columns",
            Document {
                title: "wide".to_owned(),
                blocks: vec![Block::Table {
                    header: vec![],
                    rows: vec![vec!["x".to_owned(); 101]],
                }],
                ..Default::default()
            },
        ),
        (
            "key-value pairs",
            Document {
                title: "many pairs".to_owned(),
                blocks: vec![Block::KeyValues(vec![
                    (String::new(), String::new());
                    10_001
                ])],
                ..Default::default()
            },
        ),
        (
            "text",
            Document {
                title: "t".repeat(9 * 1024 * 1024),
                ..Default::default()
            },
        ),
    ];
    for (what, doc) in cases {
        let started = std::time::Instant::now();
        let result = service().render(&doc).await;
        assert!(
            matches!(&result, Err(HostError::Invalid(m)) if m.contains(what)),
            "{what}: {:?}",
            result.map(|pdf| pdf.len())
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{what}: refused only after {:?}",
            started.elapsed()
        );
    }
}

/// A Latin document typst takes seconds to lay out, within every limit.
fn slow_document() -> Document {
    let rows = (0..SLOW_ROWS)
        .map(|i| (0..8).map(|c| format!("r{i}c{c} lorem ipsum")).collect())
        .collect();
    Document {
        title: "slow".to_owned(),
        blocks: vec![Block::Table {
            header: vec![],
            rows,
        }],
        ..Default::default()
    }
}

const SLOW_ROWS: usize = 5_000;

/// At most `max_concurrent_renders` compiles run at once, a render is
/// waited for at most `max_render_time`, and a compile nobody waits for any
/// more keeps its slot until it really ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_are_bounded_in_number_and_time() {
    use std::time::{Duration, Instant};

    let config: PdfConfig =
        toml::from_str("font_dirs = []\nmax_concurrent_renders = 1\nmax_render_time = 1\n")
            .expect("config");
    let pdf = PdfService::new(&config);
    let tiny = Document {
        title: "tiny".to_owned(),
        ..Default::default()
    };

    let started = Instant::now();
    let slow = pdf.render(&slow_document()).await;
    let waited = started.elapsed();
    assert!(
        matches!(&slow, Err(HostError::Permanent(m)) if m.contains("max_render_time")),
        "{:?} after {waited:?}",
        slow.map(|p| p.len())
    );
    assert!(waited < Duration::from_millis(1800), "waited {waited:?}");

    // Its compile goes on and holds the only slot: nothing else starts.
    let busy = pdf.render(&tiny).await;
    assert!(
        matches!(&busy, Err(HostError::Transient(m)) if m.contains("busy")),
        "{:?}",
        busy.map(|p| p.len())
    );

    // Once that compile really ends, the slot is free again.
    let give_up = Instant::now() + Duration::from_secs(300);
    loop {
        match pdf.render(&tiny).await {
            Ok(p) => {
                assert!(p.starts_with(b"%PDF-"));
                break;
            }
            Err(HostError::Transient(_)) if Instant::now() < give_up => {}
            Err(e) => panic!("{e}"),
        }
    }
}
