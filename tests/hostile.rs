//! Hostile clients against the real `ci-dispatcher` binary, on loopback:
//! hundreds of connections sending random, truncated, oversized,
//! wrong-version and unauthenticated frames. The dispatcher must keep
//! serving, and none of them may leave an event in the log.

/// Helpers for tests that run with tokens (shared with edges, containment).
#[path = "sec_common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use ci::client::{Client, ClientError, Identity};
use ci::core::{CommitId, JobId, JobRef, JobReport, Outcome};
use ci::proto::{ClientMsg, ErrorCode, Hello, PROTOCOL_VERSION, Role, ServerMsg};
use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Hostile connections per run.
const HOSTILE: usize = 480;
/// Open at once.
const CONCURRENCY: usize = 48;
/// How long the server may take to close a hostile connection.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn msg_frame(msg: &ClientMsg) -> Vec<u8> {
    frame(&ci::encoding::encode(msg).unwrap())
}

fn hello(role: Role, name: &str, version: u16, proof: Option<Vec<u8>>) -> ClientMsg {
    ClientMsg::Hello(Hello {
        version,
        role,
        name: name.into(),
        proof,
        holding: None,
        left: None,
        serves: ci::proto::Serves::Default,
    })
}

fn commit(n: u64) -> CommitId {
    CommitId::parse(&format!("{n:040x}")).unwrap()
}

fn submit(n: u64) -> ClientMsg {
    ClientMsg::Commits {
        infos: Vec::new(),
        repository: None,
        branch: Some("main".into()),
        commits: vec![commit(n)],
        tip: Some(commit(n)),
    }
}

/// What a hostile connection sends, and what the server must answer
/// (a substring of its fatal error frame), if anything in particular.
fn attack(kind: usize, rng: &mut Rng) -> (Vec<u8>, bool, Option<&'static str>) {
    let n = rng.next();
    match kind {
        // Random bytes.
        0 => {
            let len = (rng.next() % 3000) as usize;
            (rng.bytes(len), true, None)
        }
        // A truncated frame: the header promises more than comes.
        1 => {
            let mut f = 500u32.to_be_bytes().to_vec();
            f.extend(rng.bytes(37));
            (f, true, None)
        }
        // Oversized: a length far beyond the maximum, then junk.
        2 => {
            let mut f = (u32::MAX - (n as u32 % 1000)).to_be_bytes().to_vec();
            f.extend(rng.bytes(64));
            (f, false, Some("frame"))
        }
        // Just over the maximum frame size.
        3 => {
            let mut f = ((ci::proto::MAX_FRAME_BYTES + 1) as u32)
                .to_be_bytes()
                .to_vec();
            f.extend(rng.bytes(16));
            (f, false, Some("frame"))
        }
        // A well-formed hello of another protocol version.
        4 => (
            msg_frame(&hello(
                Role::Tool,
                "x",
                PROTOCOL_VERSION + 1 + (n % 100) as u16,
                None,
            )),
            false,
            Some("version"),
        ),
        // No proof at all, then a submission anyway.
        5 => {
            let mut f = msg_frame(&hello(Role::Tool, "t", PROTOCOL_VERSION, None));
            f.extend(msg_frame(&submit(n)));
            (f, false, Some("requires a token"))
        }
        // A random proof, as observer, then a submission.
        6 => {
            let mut f = msg_frame(&hello(
                Role::Observer,
                "o",
                PROTOCOL_VERSION,
                Some(rng.bytes(32)),
            ));
            f.extend(msg_frame(&submit(n)));
            (f, false, Some("wrong token"))
        }
        // A runner with a made-up proof, then a result.
        7 => {
            let mut f = msg_frame(&hello(
                Role::Runner,
                "evil",
                PROTOCOL_VERSION,
                Some(rng.bytes(32)),
            ));
            f.extend(msg_frame(&ClientMsg::Result {
                info: None,
                job: JobRef {
                    job: JobId(1),
                    attempt: 1,
                },
                report: JobReport {
                    outcome: Outcome::Pass,
                    exit_code: Some(0),
                    duration_ms: 1,
                    tests: None,
                    message: "forged".into(),
                },
                output: vec![],
            }));
            (f, false, Some("wrong token"))
        }
        // A request before any hello.
        8 => (msg_frame(&submit(n)), false, Some("must be a hello")),
        // A valid hello with one byte flipped.
        9 => {
            let mut p = ci::encoding::encode(&hello(
                Role::Tool,
                "flip",
                PROTOCOL_VERSION,
                Some(rng.bytes(32)),
            ))
            .unwrap();
            let i = (rng.next() as usize) % p.len();
            p[i] ^= 1 << (rng.next() % 8);
            let mut f = frame(&p);
            f.extend(msg_frame(&submit(n)));
            (f, false, None)
        }
        // A frame with a random payload.
        10 => {
            let len = 1 + (rng.next() % 200) as usize;
            (frame(&rng.bytes(len)), false, None)
        }
        // Says nothing: the hello timeout closes it.
        _ => (Vec::new(), false, None),
    }
}

/// Sends one attack; returns the messages the server sent back.
async fn run_attack(addr: String, kind: usize, seed: u64) -> (usize, Vec<ServerMsg>) {
    let mut rng = Rng(seed | 1);
    let (bytes, shut, _) = attack(kind, &mut rng);
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    // Errors (reset by the server mid-write) are fine.
    let _ = s.write_all(&bytes).await;
    if shut {
        let _ = s.shutdown().await;
    }
    let mut got = Vec::new();
    let read = tokio::time::timeout(CLOSE_LIMIT, s.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "kind {kind}: the connection was still open after {:?}",
        started.elapsed()
    );
    let mut msgs = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest.len() < 4 + len {
            break;
        }
        msgs.push(ci::encoding::decode::<ServerMsg>(&rest[4..4 + len]).unwrap());
        rest = &rest[4 + len..];
    }
    (kind, msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connections_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let s = secrets(dir.path());
    let data = dir.path().join("data");
    let mut d = Dispatcher::start(
        &data,
        &[
            "--token-file",
            s.dispatcher.to_str().unwrap(),
            "--hello-timeout",
            "0.5",
        ],
    );
    let started = Instant::now();
    const KINDS: usize = 12;
    let addr = d.addr.clone();
    let results: Vec<(usize, Vec<ServerMsg>)> = futures_util::stream::iter(0..HOSTILE)
        .map(|i| {
            let addr = addr.clone();
            tokio::spawn(run_attack(
                addr,
                i % KINDS,
                0x9e37_79b9_7f4a_7c15 ^ i as u64,
            ))
        })
        .buffer_unordered(CONCURRENCY)
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(results.len(), HOSTILE);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    // Every connection was greeted, and the ones with a known fault were
    // told what it was, in a fatal error frame.
    for (kind, msgs) in &results {
        assert!(
            matches!(msgs.first(), Some(ServerMsg::Greeting(_))),
            "kind {kind}: {msgs:?}"
        );
        let mut rng = Rng(1);
        if let (_, _, Some(want)) = attack(*kind, &mut rng) {
            let said = msgs.iter().find_map(|m| match m {
                ServerMsg::Error { message, fatal, .. } => Some((message.clone(), *fatal)),
                _ => None,
            });
            let (message, fatal) = said.unwrap_or_else(|| panic!("kind {kind}: no error frame"));
            assert!(fatal, "kind {kind}");
            assert!(message.contains(want), "kind {kind}: {message}");
        }
        // Nobody got past the hello.
        assert!(
            !msgs
                .iter()
                .any(|m| matches!(m, ServerMsg::Welcome { .. } | ServerMsg::CommitsAck { .. })),
            "kind {kind}: {msgs:?}"
        );
    }
    assert!(d.alive(), "the dispatcher died");

    // Still serving: a real status, a real submission, recorded.
    let tw = s.tool_write.to_str().unwrap();
    let o = tools(&[
        "--token-file",
        tw,
        "status",
        "--dispatcher",
        &d.addr,
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let status: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(status["runners"].is_array() && status["queued"].is_array());
    let sha = "abcdef0123456789abcdef0123456789abcdef01";
    let o = tools(&[
        "--token-file",
        tw,
        "submit",
        "--dispatcher",
        &d.addr,
        "--branch",
        "main",
        sha,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let events = replay_types(&d.addr, &s.tool);
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types[0], "dispatcher_started");
    for (t, v) in &events[1..] {
        assert!(t == "commit_seen" || t == "branch_moved", "{t}: {v}");
        assert_eq!(v["commit"].as_str().or(v["tip"].as_str()), Some(sha), "{v}");
    }
    assert_eq!(types.iter().filter(|t| **t == "commit_seen").count(), 1);
    let o = tools(&[
        "--token-file",
        tw,
        "status",
        "--dispatcher",
        &d.addr,
        "--json",
    ]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(status["queued"], serde_json::json!([sha]));
    assert!(d.alive());
}

fn id(role: Role, name: &str, token: &str) -> Identity {
    Identity {
        role,
        name: name.into(),
        token: Some(token.as_bytes().to_vec()),
        serves: ci::proto::Serves::Default,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let s = secrets(dir.path());
    let d = Dispatcher::start(
        &dir.path().join("data"),
        &["--token-file", s.dispatcher.to_str().unwrap()],
    );
    let addr = d.addr.as_str();
    // Every refusal of a hello here is for want of the right token: a
    // client decides on that code, never on the words.
    let refused = |r: Result<Client, ClientError>| match r {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::Unauthorized, "{message}");
            assert!(code.is_permanent());
            message
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a welcome"),
    };

    // A token only works for its own role.
    let m = refused(Client::connect(addr, &id(Role::Tool, "t", RUNNER), None, None).await);
    assert!(m.contains("wrong token for role tool"), "{m}");
    let m = refused(Client::connect(addr, &id(Role::Runner, "r", OBSERVER), None, None).await);
    assert!(m.contains("wrong token for role runner"), "{m}");
    let m = refused(
        Client::connect(
            addr,
            &Identity {
                role: Role::Observer,
                name: "o".into(),
                token: None,
                serves: ci::proto::Serves::Default,
            },
            None,
            None,
        )
        .await,
    );
    assert!(m.contains("requires a token"), "{m}");

    // A read-only tool reads but cannot submit.
    let mut tool = Client::connect(addr, &id(Role::Tool, "t", TOOL), None, None)
        .await
        .unwrap();
    assert!(matches!(
        tool.request(&ClientMsg::Status).await.unwrap(),
        ServerMsg::Status(_)
    ));
    match tool.request(&submit(1)).await {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::NotPermitted);
            assert!(message.contains("tool-write"), "{message}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }

    // An observer cannot post results (and stays connected: not fatal).
    let mut obs = Client::connect(addr, &id(Role::Observer, "o", OBSERVER), None, None)
        .await
        .unwrap();
    let result = ClientMsg::Result {
        info: None,
        job: JobRef {
            job: JobId(1),
            attempt: 1,
        },
        report: JobReport {
            outcome: Outcome::Pass,
            exit_code: Some(0),
            duration_ms: 1,
            tests: None,
            message: String::new(),
        },
        output: vec![],
    };
    match obs.request(&result).await {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::NotPermitted);
            assert!(
                message.contains("an observer may not send result"),
                "{message}"
            )
        }
        other => panic!("{:?}", other.map(|_| ())),
    }

    // A runner cannot submit commits: the connection is closed.
    let mut runner = Client::connect(addr, &id(Role::Runner, "r1", RUNNER), None, None)
        .await
        .unwrap();
    runner.writer.send(&submit(2)).await.unwrap();
    loop {
        match runner.reader.recv().await {
            Ok(Some(ServerMsg::Error {
                code,
                message,
                fatal,
            })) => {
                assert!(fatal);
                assert_eq!(code, ErrorCode::NotPermitted);
                assert!(
                    message.contains("a runner may not send commits"),
                    "{message}"
                );
                break;
            }
            Ok(Some(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(runner.reader.recv().await, Ok(None) | Err(_)));

    // Nothing of that was recorded; a tool-write token and an observer may submit.
    let mut writer = Client::connect(addr, &id(Role::Tool, "w", TOOL_WRITE), None, None)
        .await
        .unwrap();
    assert!(matches!(
        writer.request(&submit(3)).await.unwrap(),
        ServerMsg::CommitsAck { .. }
    ));
    assert!(matches!(
        obs.request(&submit(4)).await.unwrap(),
        ServerMsg::CommitsAck { .. }
    ));
    let seen: Vec<String> = replay_types(addr, &s.tool)
        .into_iter()
        .filter(|(t, _)| t == "commit_seen")
        .map(|(_, v)| v["commit"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, [commit(3).to_string(), commit(4).to_string()]);
}
