"""A Python task for the tests that calls every capability once through
the SDK's wrappers and reports what it got back."""

from __future__ import annotations

from dataclasses import dataclass

from runner_task import Denied, context, files, http, jobs, pdf, task


@dataclass
class Input:
    url: str
    forbidden: str


@task(needs=["http", "pdf", "files", "jobs"])
def everything(input: Input) -> dict[str, object]:
    context.progress(1, 4, "http")
    r = http.post(input.url, json={"q": "進捗"}, headers={"x-test": "1"}, timeout=5)
    answer = r.raise_for_status().json()
    try:
        http.get(input.forbidden)
        denied = ""
    except Denied as e:
        denied = str(e)

    context.progress(2, 4, "pdf")
    data = pdf.render(
        "週報",
        [
            pdf.Heading("売上", level=2),
            "今週の売上です。",
            pdf.Table([["りんご", "120"], ["みかん", "80"]], header=["品目", "円"]),
            pdf.KeyValues([("合計", "200")]),
            pdf.PageBreak(),
            pdf.Paragraph("以上"),
        ],
        author="業務システム",
        paper="letter",
    )

    context.progress(3, 4, "files")
    files.write("out", "reports/w48.pdf", data)
    files.write("out", "notes/a.txt", "こんにちは")
    usage = files.disk_usage("out")
    dry = files.cleanup("out", "notes/**", older_than=0, dry_run=True)

    context.progress(4, 4, "jobs")
    child = jobs.enqueue("hello-py", {"name": "child"})
    workflow = jobs.start_workflow(
        jobs.chord(
            [jobs.Step.task("hello-py", input={"name": n}) for n in ("a", "b")],
            jobs.Step.task("hello-py", input={"name": "callback"}),
        )
    )
    return {
        "status": r.status,
        "content_type": r.header("Content-Type"),
        "answer": answer,
        "denied": denied,
        "pdf_bytes": len(data),
        "note": files.read_text("out", "notes/a.txt"),
        "reports": [e.path for e in files.list("out", "reports")],
        "used_by_root": usage.used_by_root,
        "would_delete": [e.path for e in dry.deleted],
        "dry_run": dry.dry_run,
        "deleted": files.delete("out", "notes/a.txt"),
        "child": child,
        "workflow": workflow,
    }
