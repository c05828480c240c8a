//! The container image, checked without a Docker engine (none runs here):
//! the Dockerfile is read as Docker reads it (instructions, line
//! continuations) and what it relies on is checked against the repository
//! and the built binary.

use std::path::Path;
use std::process::Command;

/// The Dockerfile's instructions: (keyword, arguments), continuation lines
/// joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (word, rest) = current.split_once(' ').unwrap_or((current.as_str(), ""));
        out.push((word.to_ascii_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Every path the image copies from the build context exists; the build
/// stage builds the binary the README runs (`--bin runner`, locked
/// versions) and the runtime stage copies that binary and the config its
/// command names; it runs as a user the file creates, not root.
#[test]
fn the_dockerfile_copies_what_exists_builds_the_readme_binary_and_runs_as_a_user() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let all = instructions(&text);
    let stages: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (w, _))| w == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = (&all[stages[0]..stages[1]], &all[stages[1]..]);

    let mut copied_to = Vec::new();
    for (word, args) in &all {
        if word != "COPY" {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        let (dest, sources) = parts.split_last().unwrap();
        copied_to.push(dest.to_string());
        if parts.iter().any(|p| p.starts_with("--from")) {
            continue;
        }
        for src in sources {
            assert!(
                root().join(src).exists(),
                "COPY {src}: no such path in the repository"
            );
        }
    }

    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains("--bin runner -- dev"),
        "the README runs the `runner` binary"
    );
    let cargo = std::fs::read_to_string(root().join("runtime/Cargo.toml")).unwrap();
    assert!(
        cargo.contains("[[bin]]\nname = \"runner\""),
        "runtime builds `runner`"
    );
    let built = build
        .iter()
        .find(|(w, a)| w == "RUN" && a.contains("cargo build"))
        .expect("the build stage runs cargo build");
    for needed in ["--release", "--locked", "-p runner-runtime", "--bin runner"] {
        assert!(
            built.1.contains(needed),
            "cargo build lacks {needed}: {}",
            built.1
        );
    }
    assert!(built.1.contains("/usr/local/bin/runner"), "{}", built.1);
    // The build image's Rust is the one rust-toolchain.toml pins (the copied
    // file makes rustup use that version inside the image).
    let toolchain = std::fs::read_to_string(root().join("rust-toolchain.toml")).unwrap();
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .expect("rust-toolchain.toml names a channel")
        .trim_matches('"');
    let minor = channel.rsplit_once('.').map_or(channel, |(minor, _)| minor);
    assert!(
        all[stages[0]].1.starts_with(&format!("rust:{minor}-")),
        "the build stage is {:?}, the pinned toolchain {channel}",
        all[stages[0]].1
    );
    assert!(
        runtime.iter().any(|(w, a)| w == "COPY"
            && a.starts_with("--from=build /usr/local/bin/runner /usr/local/bin/runner")),
        "the runtime stage copies the built binary"
    );

    let user = runtime
        .iter()
        .rfind(|(w, _)| w == "USER")
        .map(|(_, a)| a.clone())
        .expect("the runtime stage sets a USER");
    assert!(
        !["root", "0", "0:0"].contains(&user.as_str()),
        "runs as {user}"
    );
    assert!(
        runtime
            .iter()
            .any(|(w, a)| w == "RUN" && a.contains("useradd") && a.contains(&user)),
        "the runtime stage creates the user {user}"
    );
    let entry = runtime.iter().find(|(w, _)| w == "ENTRYPOINT").unwrap();
    assert_eq!(entry.1, r#"["runner"]"#);
    let cmd = runtime.iter().find(|(w, _)| w == "CMD").unwrap();
    let config = cmd
        .1
        .split('"')
        .find(|p| p.ends_with(".toml"))
        .expect("CMD names a config file");
    assert!(
        copied_to.iter().any(|d| d == config),
        "CMD's {config} is not copied in"
    );
}

/// The binary needs nothing of the machine it was built on: a copy run
/// from an empty directory, with an empty environment, measures its
/// embedded `hello` (before, `runner bench` read a guest from the build
/// tree through `env!("RUNNER_GUEST_DIR")`).
#[test]
fn the_binary_runs_from_anywhere_without_its_build_tree() {
    let dir = tempfile::TempDir::new().unwrap();
    let copy = dir.path().join("runner");
    std::fs::copy(env!("CARGO_BIN_EXE_runner"), &copy).unwrap();
    let out = Command::new(&copy)
        .args([
            "bench",
            "sandbox",
            "--runs",
            "20",
            "--throughput-runs",
            "0",
            "--cpu-runs",
            "0",
        ])
        .current_dir(dir.path())
        .env_clear()
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let stdout = crate::support::ok_stdout(&out);
    assert!(stdout.contains("builtin:hello"), "{stdout}");
    assert!(stdout.contains("instantiate+run over 20 runs"), "{stdout}");
}

/// The shipped systemd units pass `systemd-analyze verify` (unknown keys,
/// bad values, a missing executable), with the test's binary standing in
/// for `/usr/local/bin/runner` and the worker template instantiated.
#[test]
fn the_systemd_units_verify() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut units = Vec::new();
    for (file, unit) in [
        ("runner-api.service", "runner-api.service"),
        ("runner-scheduler.service", "runner-scheduler.service"),
        ("runner-worker@.service", "runner-worker@email.service"),
    ] {
        let text = std::fs::read_to_string(root().join("deploy/systemd").join(file)).unwrap();
        assert!(text.contains("/usr/local/bin/runner "), "{file}");
        // Readiness is the process's own word (sd_notify, see the ops test).
        assert!(text.contains("\nType=notify\n"), "{file}");
        let text = text.replace(
            "/usr/local/bin/runner ",
            &format!("{} ", env!("CARGO_BIN_EXE_runner")),
        );
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (scripts/setup installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");
}

/// The compose file gives a stopping worker longer than its grace before
/// Docker kills it (Docker's default is 10 s: running jobs were killed),
/// as the systemd unit does; and it sets no broker URL of its own, which
/// would win over the one `runner.env` holds (with the password).
#[test]
fn compose_waits_for_the_grace_and_takes_the_broker_from_the_env_file() {
    let grace = runner::worker::WorkerConfig::default().grace;
    let secs = |text: &str, key: &str| -> u64 {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"));
        line.trim()
            .trim_end_matches('s')
            .parse()
            .unwrap_or_else(|_| panic!("{key}{line}"))
    };
    let compose = std::fs::read_to_string(root().join("deploy/compose.yaml")).unwrap();
    let shared = compose.split("\nservices:").next().unwrap();
    assert!(secs(shared, "stop_grace_period:") > grace.as_secs());
    let unit =
        std::fs::read_to_string(root().join("deploy/systemd/runner-worker@.service")).unwrap();
    assert!(secs(&unit, "TimeoutStopSec=") > grace.as_secs());
    assert!(
        !compose
            .lines()
            .any(|l| l.trim_start().starts_with("RUNNER_REDIS_URL")),
        "compose sets RUNNER_REDIS_URL over runner.env's"
    );
    // The example leaves it empty: each runner.toml's own (the compose
    // one names the `redis` service) unless filled in.
    let example = std::fs::read_to_string(root().join("deploy/runner.env.example")).unwrap();
    assert!(
        example.lines().any(|l| l == "RUNNER_REDIS_URL="),
        "{example}"
    );
    // The unit reads the per-pool file by the queue list as written
    // (`%I`), not escaped (`%i`: `worker-reports\x2cmaintenance.env`).
    assert!(unit.contains("EnvironmentFile=-/etc/runner/worker-%I.env"));
    // (The escaped name stays, for files made for the earlier unit.)
    assert!(unit.contains("EnvironmentFile=-/etc/runner/worker-%i.env"));
}

/// Every queue of a deployment's `runner.toml` (its `[queues.*]`, its
/// tasks' queues, and `default`) is consumed by one of its workers: a
/// queue no worker serves keeps its jobs for ever, and nothing says so.
/// (Compose and the systemd steps ran no worker for `default`,
/// `notifications` and `verification`: every `notify` job waited.)
#[test]
fn every_queue_of_a_deployment_has_a_worker() {
    fn queues_of(config: &str) -> std::collections::BTreeSet<String> {
        let text = std::fs::read_to_string(root().join(config)).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        let mut queues = std::collections::BTreeSet::from(["default".to_string()]);
        if let Some(t) = v.get("queues").and_then(|q| q.as_table()) {
            queues.extend(t.keys().cloned());
        }
        if let Some(t) = v.get("tasks").and_then(|q| q.as_table()) {
            queues.extend(
                t.values()
                    .filter_map(|task| task.get("queue")?.as_str().map(str::to_string)),
            );
        }
        queues
    }
    fn split(list: &str) -> impl Iterator<Item = String> + '_ {
        list.split(',').map(|q| q.trim().to_string())
    }
    // Compose: the `-Q` of each worker's command.
    let compose = std::fs::read_to_string(root().join("deploy/compose.yaml")).unwrap();
    let served: std::collections::BTreeSet<String> = compose
        .split(r#""-Q", ""#)
        .skip(1)
        .flat_map(|rest| split(rest.split('"').next().unwrap()))
        .collect();
    let missing: Vec<_> = queues_of("deploy/runner.toml")
        .into_iter()
        .filter(|q| !served.contains(q))
        .collect();
    assert!(missing.is_empty(), "compose serves no {missing:?}");
    // systemd: the worker instances deploy/README.md enables, for the
    // runner.toml it installs.
    let readme = std::fs::read_to_string(root().join("deploy/README.md")).unwrap();
    assert!(readme.contains("install -m 0644 examples/runner.toml /etc/runner/runner.toml"));
    let mut instances = std::collections::BTreeSet::new();
    for line in readme.lines().filter(|l| l.starts_with("systemctl enable")) {
        for word in line.split_whitespace() {
            if let Some(q) = word.strip_prefix("runner-worker@") {
                instances.extend(split(q));
            }
        }
        if let Some(rest) = line.split("systemd-escape ").nth(1) {
            instances.extend(split(rest.split(')').next().unwrap()));
        }
    }
    let missing: Vec<_> = queues_of("examples/runner.toml")
        .into_iter()
        .filter(|q| !instances.contains(q))
        .collect();
    assert!(missing.is_empty(), "the systemd steps serve no {missing:?}");
}
