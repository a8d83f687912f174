//! `GET /api/v1/commits/{sha}/log`: a job's output as server-sent events,
//! what there is, then chunks as they come (the shell's `Follow`), until
//! the job ends.
//!
//! The wire format, per event:
//! - output: `id: N` and `data:` lines. The chunk's text is split at
//!   `\n` and each piece sent as one `data: ` line, so a client joining an
//!   event's data lines with `\n` (as `EventSource` does) and
//!   concatenating the events gets the output back. Bytes that are not
//!   UTF-8 are shown lossily (U+FFFD; a character split between two
//!   chunks is held back and sent whole). A carriage return would end a
//!   line on the wire, so each `\r` is sent as U+240D (`␍`). `N` is the
//!   byte offset in the attempt's output after this event's bytes: a
//!   reconnect with `Last-Event-ID: N` (or `?from=N`) resumes there,
//!   without a gap or a byte twice.
//! - `event: attempt`, data the attempt number: the job was handed out
//!   again (its runner was lost); output and offsets start over.
//! - `event: gap`, data a byte count: output the dispatcher did not keep.
//! - `event: status`, data the commit's JSON view (queued, running...).
//! - `event: end`, data the final JSON view; then the stream closes.
//! - `event: error`, data a message; then the stream closes.
//! - `: keep-alive` comments every 15 s.
//!
//! Bounded: at most [`super::MAX_STREAMS`] streams (then 503 with
//! `Retry-After`); each has a small queue, and a reader that takes
//! nothing for [`STALL`] has its connection dropped. The shell cuts off a
//! local connection that falls behind, which ends the stream (a client
//! reconnects with its last id).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::api;
use super::auth;
use super::{App, ConnKill, WebError};
use crate::core::JobRef;
use crate::dispatcher::local::LocalConn;
use crate::proto::{ClientMsg, ServerMsg};

/// A comment this often keeps proxies and idle timers from closing the
/// stream, and notices a client that went away.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// A reader that takes nothing queued for this long loses its connection.
const STALL: Duration = Duration::from_secs(30);

/// Events queued for one stream's writer.
const QUEUE: usize = 16;

/// How long the first answer to `Follow` may take.
const FIRST_ANSWER: Duration = Duration::from_secs(5);

/// Turns the shell's output chunks into events (see the module docs).
#[derive(Debug, Default)]
pub struct Encoder {
    /// Bytes before this offset of the first attempt seen are not sent
    /// (a reconnect's `Last-Event-ID`).
    skip_until: u64,
    attempt: Option<JobRef>,
    /// The offset after the last byte taken in.
    next: u64,
    /// The start of a character cut at a chunk's end.
    carry: Vec<u8>,
}

/// How many bytes at the end of `b` start a UTF-8 character that the next
/// chunk completes (0 to 3).
fn incomplete_tail(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=n.min(3) {
        let c = b[n - back];
        if c & 0xC0 == 0x80 {
            continue;
        }
        let need = match c {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

impl Encoder {
    /// An encoder that resumes after byte `resume_from`.
    pub fn new(resume_from: u64) -> Encoder {
        Encoder {
            skip_until: resume_from,
            next: resume_from,
            ..Encoder::default()
        }
    }

    fn text_event(out: &mut String, id: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(bytes).replace('\r', "\u{240D}");
        let _ = writeln!(out, "id: {id}");
        for line in text.split('\n') {
            let _ = writeln!(out, "data: {line}");
        }
        out.push('\n');
    }

    /// Sends what is held back, whole or not.
    fn flush(&mut self, out: &mut String) {
        let carry = std::mem::take(&mut self.carry);
        Self::text_event(out, self.next, &carry);
    }

    /// The events for one chunk (maybe none), appended to `out`.
    pub fn chunk(&mut self, job: JobRef, offset: u64, data: &[u8], out: &mut String) {
        if self.attempt != Some(job) {
            if self.attempt.is_some() {
                self.flush(out);
                let _ = write!(out, "event: attempt\ndata: {}\n\n", job.attempt);
                self.skip_until = 0;
                self.next = 0;
            }
            self.attempt = Some(job);
        }
        let end = offset + data.len() as u64;
        if end <= self.skip_until {
            return;
        }
        let (offset, data) = if offset < self.skip_until {
            let cut = (self.skip_until - offset) as usize;
            (self.skip_until, &data[cut..])
        } else {
            (offset, data)
        };
        if offset < self.next {
            // Bytes already sent (an overlap): only the rest.
            let cut = ((self.next - offset) as usize).min(data.len());
            return self.take(self.next, &data[cut..], out);
        }
        if offset > self.next {
            self.flush(out);
            let _ = write!(out, "event: gap\ndata: {}\n\n", offset - self.next);
            self.next = offset;
        }
        self.take(offset, data, out);
    }

    fn take(&mut self, offset: u64, data: &[u8], out: &mut String) {
        if data.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        let keep = incomplete_tail(&buf);
        self.carry = buf.split_off(buf.len() - keep);
        self.next = offset + data.len() as u64;
        Self::text_event(out, self.next - self.carry.len() as u64, &buf);
    }

    /// The last events: what is held back, then `end` with the view.
    pub fn end(&mut self, view_json: &str, out: &mut String) {
        self.flush(out);
        let _ = write!(out, "event: end\ndata: {view_json}\n\n");
    }
}

/// Where a reconnect resumes: `Last-Event-ID`, else `?from=`, else 0.
fn resume_from(headers: &HeaderMap, q: &HashMap<String, String>) -> Result<u64, WebError> {
    if let Some(id) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Ok(id);
    }
    match q.get("from").filter(|f| !f.is_empty()) {
        Some(f) => f
            .parse::<u64>()
            .map_err(|_| WebError::BadRequest("from is a byte offset".into())),
        None => Ok(0),
    }
}

pub async fn log(
    State(app): State<App>,
    headers: HeaderMap,
    kill: Option<axum::Extension<ConnKill>>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    match start(app, headers, kill.map(|k| k.0), p, q).await {
        Ok(r) => r,
        Err(e) => e.into_json(),
    }
}

async fn start(
    app: App,
    headers: HeaderMap,
    kill: Option<ConnKill>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, WebError> {
    let a = auth::access(&app, &headers)?;
    let sha = p
        .map(|Path(p)| p)
        .map_err(|e| WebError::BadRequest(format!("bad path: {e}")))?;
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| WebError::BadRequest(format!("bad query string: {e}")))?;
    let from = resume_from(&headers, &q)?;
    let commit = api::resolve(&app, a.grant, &sha).await?;
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        let mut resp = WebError::Refused {
            code: crate::proto::ErrorCode::Busy,
            message: format!("{} live logs are open; try again later", super::MAX_STREAMS),
        }
        .into_json();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Ok(resp);
    };
    let mut conn = app.ctx.local.open(a.grant).await?;
    conn.send(ClientMsg::Follow { commit }).await?;
    let first = match tokio::time::timeout(FIRST_ANSWER, conn.recv()).await {
        Ok(Some(ServerMsg::Error { code, message, .. })) => {
            return Err(WebError::Refused { code, message });
        }
        Ok(Some(m)) => m,
        Ok(None) | Err(_) => return Err(WebError::Gone),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    let stop = app.stop.clone();
    tokio::spawn(async move {
        let _permit = permit;
        tokio::select! {
            _ = produce(conn, first, Encoder::new(from), tx, kill) => {}
            // The server stops: the stream ends (a client reconnects to
            // the next dispatcher with its last id).
            _ = stop.cancelled() => {}
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Whether the stream goes on after a message.
enum Next {
    More,
    Done,
}

fn encode(enc: &mut Encoder, msg: ServerMsg, out: &mut String) -> Next {
    match msg {
        ServerMsg::OutputChunk { job, offset, data } => {
            enc.chunk(job, offset, &data, out);
            Next::More
        }
        ServerMsg::Update(view) => {
            if let Ok(j) = serde_json::to_string(&view) {
                let _ = write!(out, "event: status\ndata: {j}\n\n");
            }
            Next::More
        }
        ServerMsg::OutputPruned(p) => {
            let j = crate::tools::events::pruned_json(&p);
            let _ = write!(out, "event: pruned\ndata: {j}\n\n");
            Next::More
        }
        ServerMsg::Ended(view) => {
            let j = serde_json::to_string(&view).unwrap_or_else(|_| "{}".into());
            enc.end(&j, out);
            Next::Done
        }
        ServerMsg::Error { message, .. } => {
            let line = message.replace(['\r', '\n'], " ");
            let _ = write!(out, "event: error\ndata: {line}\n\n");
            Next::Done
        }
        _ => Next::More,
    }
}

/// Queues `text` for the writer; false when the stream is over (the
/// reader went away, or took nothing for [`STALL`]: its connection is
/// dropped).
async fn send(tx: &mpsc::Sender<Bytes>, kill: Option<&ConnKill>, text: String) -> bool {
    if text.is_empty() {
        return true;
    }
    match tokio::time::timeout(STALL, tx.send(Bytes::from(text))).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            if let Some(k) = kill {
                k.0.cancel();
            }
            false
        }
    }
}

/// Carries the followed job's messages to the stream's queue until the job
/// ends, the reader goes away, or the reader stops reading (then its
/// connection is dropped).
async fn produce(
    mut conn: LocalConn,
    first: ServerMsg,
    mut enc: Encoder,
    tx: mpsc::Sender<Bytes>,
    kill: Option<ConnKill>,
) {
    let mut out = String::new();
    let mut next = encode(&mut enc, first, &mut out);
    loop {
        if !send(&tx, kill.as_ref(), std::mem::take(&mut out)).await {
            return;
        }
        if matches!(next, Next::Done) {
            return;
        }
        tokio::select! {
            m = conn.recv() => match m {
                Some(m) => next = encode(&mut enc, m, &mut out),
                None => return,
            },
            _ = tokio::time::sleep(KEEPALIVE) => out.push_str(": keep-alive\n\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::JobId;

    fn job(attempt: u32) -> JobRef {
        JobRef {
            job: JobId(1),
            attempt,
        }
    }

    /// What a client reading the events gets: (data of message events
    /// joined, last id, other events).
    fn read(wire: &str) -> (String, Option<u64>, Vec<(String, String)>) {
        let mut text = String::new();
        let mut id = None;
        let mut others = Vec::new();
        for ev in wire.split("\n\n").filter(|e| !e.is_empty()) {
            let mut kind = None;
            let mut data: Vec<&str> = Vec::new();
            for line in ev.split('\n') {
                assert!(!line.contains('\r'), "raw CR on the wire: {line:?}");
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    kind = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                }
            }
            match kind {
                None => text.push_str(&data.join("\n")),
                Some(k) => others.push((k, data.join("\n"))),
            }
        }
        (text, id, others)
    }

    #[test]
    fn chunks_come_back_whole_when_joined() {
        let mut e = Encoder::new(0);
        let mut out = String::new();
        e.chunk(job(1), 0, b"line one\nline", &mut out);
        e.chunk(job(1), 13, b" two\n\nend", &mut out);
        e.end("{\"outcome\":\"pass\"}", &mut out);
        let (text, id, others) = read(&out);
        assert_eq!(text, "line one\nline two\n\nend");
        assert_eq!(id, Some(22));
        assert_eq!(
            others,
            vec![("end".into(), "{\"outcome\":\"pass\"}".into())]
        );
        // Lines that start with a space keep it (one space follows "data:").
        let mut out = String::new();
        Encoder::new(0).chunk(job(1), 0, b"  indented\n", &mut out);
        assert_eq!(read(&out).0, "  indented\n");
    }

    #[test]
    fn carriage_returns_never_reach_the_wire_raw() {
        let mut out = String::new();
        Encoder::new(0).chunk(job(1), 0, b"50%\r100%\r\n", &mut out);
        assert!(!out.contains('\r'));
        assert_eq!(read(&out).0, "50%\u{240D}100%\u{240D}\n");
    }

    #[test]
    fn a_character_split_between_chunks_is_sent_whole() {
        let bytes = "héllo €".as_bytes();
        let mut e = Encoder::new(0);
        let mut out = String::new();
        for (i, b) in bytes.iter().enumerate() {
            e.chunk(job(1), i as u64, &[*b], &mut out);
        }
        e.end("{}", &mut out);
        let (text, id, _) = read(&out);
        assert_eq!(text, "héllo €");
        assert_eq!(id, Some(bytes.len() as u64));
        // Bytes that are not UTF-8 at all come out lossily.
        let mut out = String::new();
        Encoder::new(0).chunk(job(1), 0, b"a\xffb", &mut out);
        assert_eq!(read(&out).0, "a\u{fffd}b");
    }

    #[test]
    fn ids_resume_without_gap_or_duplicate() {
        let chunks: Vec<(u64, &[u8])> = vec![(0, b"abc\n"), (4, b"def\n"), (8, b"ghi\n")];
        for resume in 0..=12u64 {
            let mut e = Encoder::new(resume);
            let mut out = String::new();
            for (o, d) in &chunks {
                e.chunk(job(1), *o, d, &mut out);
            }
            let (text, _, others) = read(&out);
            assert_eq!(text.as_bytes(), &b"abc\ndef\nghi\n"[resume as usize..]);
            assert!(others.is_empty(), "{others:?}");
        }
    }

    #[test]
    fn gaps_and_new_attempts_are_said() {
        let mut e = Encoder::new(0);
        let mut out = String::new();
        e.chunk(job(1), 0, b"ab", &mut out);
        e.chunk(job(1), 10, b"cd", &mut out);
        e.chunk(job(2), 0, b"new", &mut out);
        let (text, id, others) = read(&out);
        assert_eq!(text, "abcdnew");
        assert_eq!(id, Some(3));
        assert_eq!(
            others,
            vec![
                ("gap".to_string(), "8".to_string()),
                ("attempt".to_string(), "2".to_string())
            ]
        );
    }

    #[test]
    fn incomplete_tails() {
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_tail(&"é".as_bytes()[..1]), 1);
        assert_eq!(incomplete_tail(&"€".as_bytes()[..2]), 2);
        assert_eq!(incomplete_tail(&"😀".as_bytes()[..3]), 3);
        assert_eq!(incomplete_tail(b"\xff"), 0);
        assert_eq!(incomplete_tail(b""), 0);
    }
}
