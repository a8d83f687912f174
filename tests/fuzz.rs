//! Property tests: arbitrary bytes through the frame decoder, the message
//! decoder and every message handler path of a live dispatcher. Nothing may
//! panic, and the dispatcher must keep answering.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use ci::client::{Client, Identity};
use ci::dispatcher::{self, DispatcherConfig};
use ci::proto::auth::{Auth, Tokens};
use ci::proto::{ClientMsg, MAX_FRAME_BYTES, Role, ServerMsg};

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            prev(info)
        }));
    });
}

/// Bytes that often start like a real message: a variant index first.
fn message_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        (0u8..12, proptest::collection::vec(any::<u8>(), 0..128)).prop_map(|(v, mut rest)| {
            rest.insert(0, v);
            rest
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn frame_decoder_never_panics_or_overallocates(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)
    ) {
        let mut codec = ci::proto::conn::codec();
        let mut buf = BytesMut::new();
        for c in chunks {
            buf.extend_from_slice(&c);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => prop_assert!(frame.len() <= MAX_FRAME_BYTES),
                    Ok(None) => break,
                    Err(_) => return Ok(()),
                }
            }
            // The decoder reserves for the announced frame: never more than the maximum.
            prop_assert!(buf.capacity() <= MAX_FRAME_BYTES + 64 + 4);
        }
    }

    #[test]
    fn message_decoding_never_panics(bytes in message_bytes()) {
        let _ = ci::encoding::decode::<ClientMsg>(&bytes);
        let _ = ci::encoding::decode_wire::<ClientMsg>(&bytes);
        let _ = ci::encoding::decode_wire::<ServerMsg>(&bytes);
        let _ = ci::encoding::decode::<ci::core::Record>(&bytes);
    }
}

fn job_ref() -> impl Strategy<Value = ci::core::JobRef> {
    (0u64..6, 0u32..4).prop_map(|(j, a)| ci::core::JobRef {
        job: ci::core::JobId(j),
        attempt: a,
    })
}

fn commit() -> impl Strategy<Value = ci::core::CommitId> {
    (0u8..8).prop_map(|n| ci::core::CommitId::parse(&format!("{n:040x}")).unwrap())
}

fn report() -> impl Strategy<Value = ci::core::JobReport> {
    use ci::core::{Outcome, TestCounts};
    (
        prop_oneof![
            Just(Outcome::Pass),
            Just(Outcome::Fail),
            Just(Outcome::Timeout),
            Just(Outcome::Error)
        ],
        any::<Option<i32>>(),
        any::<u64>(),
        any::<Option<(u32, u32)>>(),
        ".{0,40}",
    )
        .prop_map(
            |(outcome, exit_code, duration_ms, t, message)| ci::core::JobReport {
                outcome,
                exit_code,
                duration_ms,
                tests: t.map(|(total, failed)| TestCounts {
                    total,
                    failed,
                    ..TestCounts::default()
                }),
                message,
            },
        )
}

/// Well-formed messages of every kind, with hostile field values.
fn message() -> impl Strategy<Value = ClientMsg> {
    let branch = prop_oneof![
        Just(None),
        Just(Some("main".to_string())),
        ".{0,20}".prop_map(Some),
    ];
    prop_oneof![
        (any::<u16>(), ".{0,80}", any::<Option<Vec<u8>>>()).prop_map(|(version, name, proof)| {
            ClientMsg::Hello(ci::proto::Hello {
                version,
                role: Role::Tool,
                name,
                proof,
                holding: None,
                left: None,
                serves: ci::proto::Serves::Default,
            })
        }),
        proptest::option::of(job_ref()).prop_map(|holding| ClientMsg::Heartbeat { holding }),
        Just(ClientMsg::Ready),
        (
            job_ref(),
            report(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(job, report, output)| ClientMsg::Result {
                info: None,
                job,
                report,
                output
            }),
        job_ref().prop_map(|job| ClientMsg::HandBack { job }),
        (
            branch,
            proptest::collection::vec(commit(), 0..5),
            proptest::option::of(commit())
        )
            .prop_map(|(branch, commits, tip)| ClientMsg::Commits {
                infos: Vec::new(),
                repository: None,
                branch,
                commits,
                tip
            }),
        proptest::option::of(".{0,20}").prop_map(|after| ClientMsg::GetTips {
            repository: None,
            after,
        }),
        Just(ClientMsg::Status),
        (
            proptest::option::of(commit()),
            proptest::option::of(any::<u64>()),
            any::<u32>()
        )
            .prop_map(|(commit, before, limit)| ClientMsg::Results {
                branch: None,
                repository: None,
                outcome: None,
                commit,
                before,
                limit
            }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(from_seq, limit)| ClientMsg::Replay { from_seq, limit }),
        (0u64..8).prop_map(|j| ClientMsg::Output {
            job: ci::core::JobId(j)
        }),
    ]
}

/// A message, or its encoding with one byte changed, or random bytes.
fn wire_message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => message().prop_map(|m| ci::encoding::encode(&m).unwrap()),
        1 => (message(), any::<usize>(), 1u8..=255).prop_map(|(m, i, x)| {
            let mut b = ci::encoding::encode(&m).unwrap();
            let n = b.len();
            b[i % n] ^= x;
            b
        }),
        1 => message_bytes(),
    ]
}

const SECRETS: &str = "runner: fuzz-runner-secret-0123456789\nobserver: fuzz-observer-secret-0123456789\ntool: fuzz-tool-secret-0123456789\ntool-write: fuzz-tool-write-secret-0123456789\n";

/// Every decodable message, sent after a valid hello of every role, to a
/// dispatcher in this process; after each case the dispatcher still answers.
#[test]
fn every_handler_survives_arbitrary_messages() {
    count_panics();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::parse(SECRETS).unwrap();
    let mut cfg = DispatcherConfig::new("127.0.0.1:0");
    cfg.heartbeat_timeout = Duration::from_millis(300);
    let store = ci::store::SledLog::open(&dir.path().join("data")).unwrap();
    let d = rt
        .block_on(dispatcher::start(
            cfg,
            Auth::with_tokens(tokens.clone()),
            Box::new(store),
        ))
        .unwrap();
    let addr = d.local_addr().to_string();
    let ids: Vec<Identity> = [
        (Role::Runner, "fuzz-r"),
        (Role::Observer, "o"),
        (Role::Tool, "t"),
    ]
    .into_iter()
    .map(|(role, name)| Identity {
        role,
        name: name.into(),
        token: Some(tokens.for_role(role).unwrap().to_vec()),
        serves: ci::proto::Serves::Default,
    })
    .collect();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 600,
        ..ProptestConfig::default()
    });
    let decoded = AtomicUsize::new(0);
    runner
        .run(&proptest::collection::vec(wire_message(), 1..6), |msgs| {
            let msgs: Vec<ClientMsg> = msgs
                .iter()
                .filter_map(|b| ci::encoding::decode_wire(b).ok())
                .collect();
            decoded.fetch_add(msgs.len(), Ordering::Relaxed);
            rt.block_on(async {
                for id in &ids {
                    let mut c = Client::connect(&addr, id, None, None).await.unwrap();
                    for m in &msgs {
                        if c.writer.send(m).await.is_err() {
                            break;
                        }
                    }
                    // Read what comes back until the server goes quiet or closes.
                    while let Ok(Ok(Some(_))) =
                        tokio::time::timeout(Duration::from_millis(20), c.reader.recv()).await
                    {
                    }
                }
                let mut t = Client::connect(&addr, &ids[2], None, None).await.unwrap();
                let status = t.request(&ClientMsg::Status).await.unwrap();
                assert!(matches!(status, ServerMsg::Status(_)));
            });
            prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0);
            Ok(())
        })
        .unwrap();
    let decoded = decoded.load(Ordering::Relaxed);
    assert!(decoded > 100, "too few decodable messages: {decoded}");
    rt.block_on(d.shutdown()).unwrap();
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

/// A small real state: jobs queued, running and finished.
fn folded_state() -> ci::core::State {
    use ci::core::{CommitId, Event, JobId, JobReport, Outcome};
    let mut s = ci::core::State::new();
    let mut seq = 0;
    let mut apply = |s: &mut ci::core::State, e: Event| {
        seq += 1;
        s.apply_record(&ci::core::Record {
            seq,
            at_ms: 1_700_000_000_000 + seq,
            event: e,
        })
        .unwrap();
    };
    for j in 1..=6u64 {
        let commit = CommitId::from_bytes(&[j as u8; 20]).unwrap();
        apply(
            &mut s,
            Event::CommitSeen {
                job: JobId(j),
                commit,
                branch: Some(if j % 2 == 0 { "main" } else { "dev" }.into()),
            },
        );
        if j <= 4 {
            let runner = format!("r{j}");
            apply(
                &mut s,
                Event::JobAssigned {
                    job: JobId(j),
                    commit,
                    runner: runner.clone(),
                    attempt: 1,
                },
            );
            if j <= 2 {
                apply(
                    &mut s,
                    Event::Result {
                        job: JobId(j),
                        commit,
                        runner: Some(runner),
                        attempt: 1,
                        report: JobReport {
                            outcome: Outcome::Pass,
                            exit_code: Some(0),
                            duration_ms: 12,
                            tests: None,
                            message: "OK".into(),
                        },
                        output_bytes: 3,
                    },
                );
            }
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    /// A damaged snapshot never panics the decoder; whatever it accepts is
    /// a consistent state (it encodes and decodes to itself).
    #[test]
    fn damaged_snapshots_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = folded_state().to_snapshot();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(s) = ci::core::State::from_snapshot(&bytes) {
            let again = ci::core::State::from_snapshot(&s.to_snapshot()).unwrap();
            prop_assert_eq!(again, s);
        }
    }
}
