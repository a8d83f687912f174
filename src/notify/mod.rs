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
//! Each sink has its own queue and worker: notifications to one sink go
//! out one at a time, oldest first, so statuses never arrive out of order;
//! a sink that is down is retried with backoff (up to
//! [`RETRY_MAX`]) and gets everything, in order, once it is back, while
//! the other sinks go on.

pub mod body;
pub mod deliver;
pub mod sink;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::{Backoff, random_seed};
use crate::core::{DropReason, Due};
use crate::dispatcher::local::Local;
use crate::proto::{ClientMsg, ServerMsg};
use deliver::Delivery;
pub use sink::{Forge, Sink, StatusTarget};

/// The first pause after a failed delivery.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);

/// The longest pause between attempts on a sink that is down: once it is
/// back, it is noticed within this.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the notifier needs to know.
#[derive(Clone, Debug, Default)]
pub struct NotifyConfig {
    pub sinks: Vec<Sink>,
    /// The dashboard's public address (`--public-url`), for links.
    pub dashboard: Option<String>,
}

/// One sink's notifications not yet delivered, by number.
#[derive(Default)]
struct Queue {
    owed: Mutex<BTreeMap<u64, Due>>,
    wake: Notify,
}

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
    let (acks_tx, mut acks) = mpsc::channel::<(u64, Option<DropReason>)>(1024);
    let mut queues: HashMap<String, Arc<Queue>> = HashMap::new();
    for sink in &config.sinks {
        let q = Arc::new(Queue::default());
        queues.insert(sink.key(), q.clone());
        info!(sink = %sink.describe(), key = %sink.key(), "notifications go to");
        tokio::spawn(worker(
            sink.clone(),
            q,
            client.clone(),
            config.dashboard.clone(),
            acks_tx.clone(),
            stop.clone(),
        ));
    }
    drop(acks_tx);
    let mut backoff = Backoff::random();
    loop {
        let Ok(mut conn) = local.open_notifier().await else {
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = conn.recv() => match msg {
                    Some(ServerMsg::Owed { dues }) => {
                        for d in dues {
                            if let Some(q) = queues.get(&d.sink) {
                                q.owed.lock().expect("queue lock").entry(d.n).or_insert(d);
                                q.wake.notify_one();
                            }
                        }
                    }
                    Some(other) => warn!(msg = other.kind(), "the notifier got an unexpected message"),
                    // Cut off (it fell behind) or the dispatcher stops.
                    None => break,
                },
                Some((n, dropped)) = acks.recv() => {
                    if conn.send(ClientMsg::Notified { n, dropped }).await.is_err() {
                        break;
                    }
                }
            }
        }
        if stop.is_cancelled() {
            return;
        }
        // Everything still owed comes again with the next connection.
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Delivers one sink's notifications, oldest first, one at a time.
async fn worker(
    sink: Sink,
    queue: Arc<Queue>,
    client: reqwest::Client,
    dashboard: Option<String>,
    acks: mpsc::Sender<(u64, Option<DropReason>)>,
    stop: CancellationToken,
) {
    let describe = sink.describe();
    let mut backoff = Backoff::between(
        RETRY_FIRST.as_millis() as u64,
        RETRY_MAX.as_millis() as u64,
        random_seed(),
    );
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        let head = queue
            .owed
            .lock()
            .expect("queue lock")
            .first_key_value()
            .map(|(_, d)| d.clone());
        let Some(due) = head else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = queue.wake.notified() => continue,
            }
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            d = deliver::deliver(&client, &sink, &due, dashboard.as_deref()) => d,
        };
        let dropped = match outcome {
            Delivery::Delivered => None,
            Delivery::Refused { status, message } => {
                warn!(sink = %describe, id = %due.key(), status, %message,
                    "the sink refused a notification for good; it is dropped (on record)");
                Some(DropReason::Refused { status, message })
            }
            Delivery::Retry(why) => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                let delay = backoff.next_delay();
                warn!(sink = %describe, id = %due.key(), failing_for_s = since.elapsed().as_secs(),
                    retry_in_ms = delay.as_millis() as u64, "notification not delivered: {why}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if failing_since.take().is_some() {
            info!(sink = %describe, "the sink takes notifications again");
        }
        backoff.reset();
        queue.owed.lock().expect("queue lock").remove(&due.n);
        if acks.send((due.n, dropped)).await.is_err() {
            return;
        }
    }
}
