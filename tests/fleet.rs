//! A fleet of runners on the real dispatcher: thousands of runner
//! connections from one address (127.0.0.1, as in the benchmark) are all
//! accepted and registered; under an open-file limit too low for them the
//! dispatcher says so in one line at start, and a connection beyond its
//! cap is refused at once with a message naming the cap, instead of
//! waiting unanswered in the backlog.
//!
//! The runners are simulated connections (the library's client, as the
//! benchmark's idle runners), so thousands fit in a few seconds; lowering
//! the dispatcher's limit needs root (prlimit), as CI runs.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ci::client::{Client, ClientError, Identity};
use ci::proto::{ErrorCode, Role, Serves};
use common::*;
use serde_json::Value;

/// Runner connections in the fleet test: the ten thousand of issue 13
/// (about 3 s on two cores).
const FLEET: usize = 10_000;

/// Handshakes in flight at once (below the unproven-per-address limit).
const CONCURRENT: usize = 128;

fn runner_id(name: String) -> Identity {
    Identity {
        role: Role::Runner,
        name,
        token: None,
        serves: Serves::Default,
    }
}

/// Raises this process's soft open-file limit to the hard one; the limit.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    {
        lim.rlim_cur as u64
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Connects runners `names` with at most [`CONCURRENT`] handshakes at once.
async fn connect_all(addr: &str, names: Vec<String>) -> Vec<Result<Client, ClientError>> {
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    let mut tasks = Vec::new();
    for name in names {
        let (addr, gate) = (addr.to_string(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _turn = gate.acquire_owned().await.expect("open");
            Client::connect(&addr, &runner_id(name), None, None).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("connect task"));
    }
    out
}

/// Idle runners and all runners in `status --json`.
fn runner_states(addr: &str) -> Result<(usize, usize), String> {
    let s: Value = try_status_json(addr)?;
    let runners = s["runners"].as_array().ok_or("no runners in status")?;
    let idle = runners.iter().filter(|r| r["state"] == "idle").count();
    Ok((idle, runners.len()))
}

/// Until `status` shows `want` idle runners (a tool refused while the
/// dispatcher is full tries again).
fn wait_idle(addr: &str, want: usize, within: Duration) {
    wait_for(
        &format!("{want} idle runners in status"),
        within,
        || match runner_states(addr)? {
            (idle, _) if idle == want => Ok(()),
            (idle, all) => Err(format!("{idle} idle of {all}")),
        },
    );
}

#[test]
fn ten_thousand_runners_from_one_address_are_all_served() {
    let limit = raise_fd_limit();
    assert!(
        limit >= FLEET as u64 + 256,
        "{FLEET} runner connections need an open-file limit of at least {}; it is {limit} (ulimit -Hn)",
        FLEET + 256
    );
    let repo = TestRepo::new();
    // Long enough a timeout that nobody is lost while the fleet connects.
    let d = Dispatcher::start(&repo.dir("dispatcher"), &["--heartbeat-timeout", "60"]);
    let rt = runtime();
    let started = Instant::now();
    let names = (0..FLEET).map(|i| format!("fleet-{i:05}")).collect();
    let clients = rt.block_on(connect_all(d.addr(), names));
    let refused: Vec<String> = clients
        .iter()
        .filter_map(|c| c.as_ref().err().map(|e| e.to_string()))
        .take(5)
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let connected = started.elapsed();
    wait_idle(d.addr(), FLEET, SHORT);
    eprintln!(
        "{FLEET} runners connected in {connected:?}, all idle after {:?}",
        started.elapsed()
    );
    // Their heartbeats are heard, and nobody is refused or dropped for them.
    rt.block_on(async {
        let mut clients: Vec<Client> = clients.into_iter().map(Result::unwrap).collect();
        for c in &mut clients {
            c.writer
                .send(&ci::proto::ClientMsg::Heartbeat { holding: None })
                .await
                .expect("heartbeat");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(runner_states(d.addr()), Ok((FLEET, FLEET)));
        drop(clients);
    });
}

/// `ci-dispatcher` under `prlimit --nofile=N:N`.
fn dispatcher_with_nofile(nofile: u64, data: &Path, root: &Path) -> (Proc, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = vec![
        format!("--nofile={nofile}:{nofile}"),
        bin("ci-dispatcher").display().to_string(),
        "--listen".into(),
        addr.clone(),
        "--data-dir".into(),
        p(data).to_string(),
        "--heartbeat-timeout".into(),
        "60".into(),
    ];
    let d = Proc::spawn_path(Path::new("/usr/bin/prlimit"), &args, root, "dispatcher");
    wait_for("the dispatcher to listen", SHORT, || {
        let out = d.stdout();
        match out.contains("listening on") {
            true => Ok(()),
            false => Err(format!("stdout so far: {out:?}")),
        }
    });
    (d, addr)
}

#[test]
fn a_low_open_file_limit_is_said_once_and_refuses_beyond_the_cap_at_once() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "prlimit needs root (CI runs as root)"
    );
    raise_fd_limit();
    let repo = TestRepo::new();
    let nofile = 200;
    // The rule the dispatcher applies (its reserve kept free).
    let cap = (nofile - ci::dispatcher::listener::FD_RESERVE) as usize;
    let (mut d, addr) = dispatcher_with_nofile(nofile, &repo.dir("dispatcher"), repo.root());
    let err = d.stderr();
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("open-file limit allows fewer connections"))
        .collect();
    assert_eq!(said.len(), 1, "one line at start:\n{err}");
    assert!(
        said[0].contains(&format!("room for {cap} connections"))
            && said[0].contains("LimitNOFILE=")
            && said[0].contains("ulimit -n"),
        "says the cap and what to raise: {}",
        said[0]
    );

    let rt = runtime();
    // Up to the cap: everyone is served (a few handshakes at a time, as
    // the unproven-per-address limit is small under this cap).
    let names: Vec<String> = (0..cap).map(|i| format!("r-{i:04}")).collect();
    let clients = rt.block_on(async {
        let mut out = Vec::new();
        for chunk in names.chunks(8) {
            out.extend(connect_all(&addr, chunk.to_vec()).await);
        }
        out
    });
    let clients: Vec<Client> = clients
        .into_iter()
        .map(|c| c.unwrap_or_else(|e| panic!("refused below the cap of {cap}: {e}")))
        .collect();
    // Beyond it: refused at once, saying why, not left to time out.
    for i in 0..5 {
        let started = Instant::now();
        let r = rt.block_on(Client::connect(
            &addr,
            &runner_id(format!("extra-{i}")),
            None,
            None,
        ));
        let took = started.elapsed();
        match r {
            Err(e @ ClientError::Refused { .. }) => {
                assert_eq!(e.code(), Some(ErrorCode::Busy), "{e}");
                assert!(!e.is_fatal(), "busy is retried: {e}");
                assert!(
                    e.to_string()
                        .contains(&format!("at most {cap} connections")),
                    "{e}"
                );
            }
            Err(e) => panic!("beyond the cap: {e}, not a refusal (after {took:?})"),
            Ok(_) => panic!("a connection beyond the cap of {cap} was served"),
        }
        assert!(took < Duration::from_secs(2), "refused only after {took:?}");
    }
    let err = d.stderr();
    assert_eq!(
        err.matches("connection cap reached").count(),
        1,
        "the cap is said once, not per refusal:\n{err}"
    );
    // Room again once some leave: a tool is served and sees the rest.
    let mut clients = clients;
    clients.truncate(cap - 10);
    wait_idle(&addr, cap - 10, SHORT);
    drop(clients);
    assert!(d.is_running(), "{}", d.report());
    d.sigterm();
    assert_eq!(exit_code(&d.wait_exit(SHORT)), Some(0), "{}", d.report());
}
