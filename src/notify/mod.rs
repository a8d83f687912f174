//! The notifier: delivers the outbox the log keeps.
//!
//! The core decides what is owed (`NotificationDue` events: a commit
//! status as a job moves, a result, a branch turning red or green); this
//! module only carries it out. It talks to the shell over an in-process
//! connection (`dispatcher::local`): on connecting it is sent everything
//! still owed, then each batch's new notifications once they are durable,
//! and it reports each delivery back, which the core records as
//! `NotificationDelivered`. A crash between a delivery and that record
//! sends the notification again after the restart, with the same
//! idempotency key and the same body, so a receiver can drop the repeat.
//!
//! What goes out when is decided by [`machine::Notifier`] (sans-IO, also
//! driven by the simulator): notifications to one sink go out one at a
//! time, oldest first, so statuses never arrive out of order; a sink that
//! is down is retried with backoff (up to [`machine::RETRY_MAX_MS`]) and
//! gets everything, in order, once it is back, while the other sinks go
//! on. This file only carries the machine's actions out: the connection,
//! HTTP requests and commands (`deliver.rs`), timers.

pub mod body;
pub mod deliver;
pub mod machine;
pub mod sink;

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::{Backoff, random_seed};
use crate::dispatcher::local::Local;
use crate::proto::{ClientMsg, ServerMsg};
use deliver::Delivery;
use machine::{Action, Notifier};
pub use sink::{Forge, Sink, StatusTarget};

/// Most sinks of all kinds together: bounded, like every queue (each has
/// its own outbox in the log).
pub const MAX_SINKS: usize = 32;

/// What the notifier needs to know.
#[derive(Clone, Debug, Default)]
pub struct NotifyConfig {
    pub sinks: Vec<Sink>,
    /// The dashboard's public address (`--public-url`), for links.
    pub dashboard: Option<String>,
}

/// A finished attempt: which sink, which notification, what came of it.
type Attempt = (String, u64, Delivery);

/// Delivers what the log owes until `stop`, or until the dispatcher stops.
pub async fn run(local: Local, config: NotifyConfig, stop: CancellationToken) {
    if config.sinks.is_empty() {
        return;
    }
    let client = match reqwest::Client::builder()
        .timeout(deliver::HTTP_TIMEOUT)
        .connect_timeout(deliver::HTTP_TIMEOUT)
        .user_agent(concat!("ci-dispatcher/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!("notifications are off: cannot make an HTTP client: {e}");
            return;
        }
    };
    let sinks: HashMap<String, Sink> = config
        .sinks
        .iter()
        .map(|s| {
            info!(sink = %s.describe(), key = %s.key(), "notifications go to");
            (s.key(), s.clone())
        })
        .collect();
    let mut machine = Notifier::new(sinks.keys().cloned(), random_seed());
    let clock = tokio::time::Instant::now();
    let now_ms = move || clock.elapsed().as_millis() as u64;
    let (done_tx, mut done) = mpsc::channel::<Attempt>(sinks.len().max(1));
    let mut reconnect = Backoff::random();
    loop {
        let Ok(mut conn) = local.open_notifier().await else {
            return;
        };
        'connected: loop {
            // An acknowledgement that cannot be sent is not lost: what it
            // settles is owed again after the reconnection, and sent again.
            let mut cut_off = false;
            for action in machine.poll(now_ms()) {
                match action {
                    Action::Ack { n, dropped } => {
                        if !cut_off && conn.send(ClientMsg::Notified { n, dropped }).await.is_err()
                        {
                            cut_off = true;
                        }
                    }
                    Action::Deliver { sink, due } => {
                        let (client, done_tx) = (client.clone(), done_tx.clone());
                        let target = sinks[&sink].clone();
                        let dashboard = config.dashboard.clone();
                        tokio::spawn(async move {
                            let d = deliver::deliver(&client, &target, &due, dashboard.as_deref())
                                .await;
                            let _ = done_tx.send((sink, due.n, d)).await;
                        });
                    }
                }
            }
            if cut_off {
                break 'connected;
            }
            let retry = machine
                .poll_timeout()
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = conn.recv() => match msg {
                    Some(ServerMsg::Owed { dues }) => machine.owed(dues),
                    Some(other) => warn!(msg = other.kind(), "the notifier got an unexpected message"),
                    // Cut off (it fell behind) or the dispatcher stops.
                    None => break 'connected,
                },
                Some((sink, n, d)) = done.recv() => {
                    let describe = sinks[&sink].describe();
                    match &d {
                        Delivery::Delivered => {
                            if machine.failing_for_ms(&sink, now_ms()).is_some() {
                                info!(sink = %describe, "the sink takes notifications again");
                            }
                        }
                        Delivery::Refused { status, message } => warn!(sink = %describe, n, status, %message,
                            "the sink refused a notification for good; it is dropped (on record)"),
                        Delivery::Retry(why) => warn!(sink = %describe, n,
                            failing_for_s = machine.failing_for_ms(&sink, now_ms()).unwrap_or(0) / 1000,
                            "notification not delivered, will try again: {why}"),
                    }
                    machine.outcome(&sink, n, d, now_ms());
                }
                _ = tokio::time::sleep(retry.unwrap_or(Duration::from_secs(3600))), if retry.is_some() => {}
            }
        }
        if stop.is_cancelled() {
            return;
        }
        // Everything still owed comes again with the next connection.
        tokio::time::sleep(reconnect.next_delay()).await;
    }
}
