//! `ci-tools demo`: the whole system on a throw-away repository seeded from
//! `data/`: passing tests, then a failing test, then its fix.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::progress::Progress;
use super::up::{UpOptions, launch};
use crate::core::CommitId;

const PASSING: &str = include_str!("../../data/passing/tests/test_basics.py");
const FAILING: &str = include_str!("../../data/failing/tests/test_broken.py");
const FIXED: &str = include_str!("../../data/fixed/tests/test_broken.py");

/// Commits `files` on `main` of the repository at `dir` (created if needed).
/// The demo authors its own commits; the product only reads repositories.
pub fn commit_files(dir: &Path, files: &[(&str, &str)], message: &str) -> anyhow::Result<CommitId> {
    let repo = match git2::Repository::open(dir) {
        Ok(r) => r,
        Err(_) => {
            let mut opts = git2::RepositoryInitOptions::new();
            opts.initial_head("main");
            git2::Repository::init_opts(dir, &opts)?
        }
    };
    for (path, content) in files {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&full, content)?;
    }
    let mut index = repo.index()?;
    for (path, _) in files {
        index.add_path(Path::new(path))?;
    }
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("CI Demo", "demo@example.invalid")?;
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let oid = repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)?;
    CommitId::from_bytes(oid.as_bytes()).context("git returned an odd object id")
}

pub async fn run() -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("ci-demo-").tempdir()?;
    let repo = tmp.path().join("repo");
    println!("demo: seeding a repository at {}", repo.display());
    let c1 = commit_files(
        &repo,
        &[("tests/test_basics.py", PASSING)],
        "Add passing tests",
    )?;
    let cluster = launch(UpOptions {
        repo: repo.display().to_string(),
        runners: 2,
        data_dir: tmp.path().join("dispatcher"),
        work_dir: tmp.path().join("work"),
        listen: "127.0.0.1:0".into(),
        poll_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_millis(500),
        job_timeout: Duration::from_secs(120),
        branches: vec!["main".into()],
        http: None,
    })
    .await?;
    let addr = cluster.addr.clone();
    println!("demo: dispatcher on {addr}, 2 runners, observer polling every 0.2 s");
    println!("demo: committed {} (passing tests)", c1.short());
    let result = async {
        wait_all(&addr, &[c1]).await?;
        let c2 = commit_files(
            &repo,
            &[("tests/test_broken.py", FAILING)],
            "Add a test that fails",
        )?;
        let c3 = commit_files(
            &repo,
            &[("tests/test_broken.py", FIXED)],
            "Fix the failing test",
        )?;
        println!(
            "demo: committed {} (adds a failing test) and {} (fixes it) together",
            c2.short(),
            c3.short()
        );
        let results = wait_all(&addr, &[c1, c2, c3]).await?;
        println!();
        print!("{}", super::commits::results_table(&results));
        println!();
        let outcomes: Vec<&str> = results.iter().map(|r| r.outcome.as_str()).collect();
        anyhow::Ok(outcomes == ["pass", "fail", "pass"])
    }
    .await;
    cluster.stop().await?;
    let as_expected = result?;
    println!(
        "demo: done in {:.1} s; `ci-tools replay --data-dir DIR` shows the history of a real run",
        started.elapsed().as_secs_f64()
    );
    if as_expected {
        Ok(ExitCode::SUCCESS)
    } else {
        crate::cli::stderr_line(format_args!(
            "demo: the outcomes were not pass, fail, pass as expected"
        ));
        Ok(ExitCode::from(1))
    }
}

async fn wait_all(
    addr: &str,
    commits: &[CommitId],
) -> anyhow::Result<Vec<crate::proto::ResultView>> {
    let mut client = super::connect(addr, None).await?;
    let mut progress = Progress::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut views = Vec::new();
        for c in commits {
            if let Some(v) = super::commits::fetch_result(&mut client, *c).await? {
                views.push(v);
            }
        }
        let state = |o: &str| views.iter().filter(|v| v.outcome == o).count();
        let done = views.iter().filter(|v| v.is_final()).count();
        progress.update(&format!(
            "demo: {done}/{} done, {} running, {} queued, {} not yet seen",
            commits.len(),
            state("running"),
            state("pending"),
            commits.len() - views.len()
        ));
        if done == commits.len() {
            progress.finish();
            return Ok(views);
        }
        if Instant::now() > deadline {
            progress.finish();
            bail!("the demo's commits did not finish within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
