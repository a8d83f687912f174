//! What `/metrics` shows, in the Prometheus text format (the
//! `prometheus-client` crate).
//!
//! Two kinds of figures: what the IO side measures as it goes (append and
//! flush latency, connections, and — counted from the records it writes —
//! events, heartbeat losses and job durations, since this process
//! started), and what is derived from the state when scraped (queue
//! length, runners by state, jobs by status: a [`MetricsView`] the shell
//! answers, so a scrape reads the same state every client does).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::{Event, LostReason, Record};
use crate::proto::MetricsView;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// The dispatcher's metrics; shared (`Arc`) by the log writer, the
/// flusher, the listener and the web server. Updating is a few atomic
/// operations.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    append: Histogram,
    flush: Histogram,
    job_duration: Histogram,
    heartbeat_losses: Counter,
    heartbeats: Counter,
    events: Family<Kind, Counter>,
    connections: Gauge,
    accepted: Counter,
    queue: Gauge,
    runners: Family<StateLabel, Gauge>,
    jobs: Family<StatusLabel, Gauge>,
    log_events: Gauge,
    pruned: Family<ReasonLabel, Gauge>,
    pruned_bytes: Family<ReasonLabel, Gauge>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("ci");
        // 100 µs to 3.3 s.
        let append = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        let flush = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        // 100 ms to 55 min.
        let job_duration = Histogram::new(exponential_buckets(0.1, 2.0, 16));
        let m = Metrics {
            registry: Registry::default(),
            append,
            flush,
            job_duration,
            heartbeat_losses: Counter::default(),
            heartbeats: Counter::default(),
            events: Family::default(),
            connections: Gauge::default(),
            accepted: Counter::default(),
            queue: Gauge::default(),
            runners: Family::default(),
            jobs: Family::default(),
            log_events: Gauge::default(),
            pruned: Family::default(),
            pruned_bytes: Family::default(),
        };
        registry.register(
            "log_append_seconds",
            "Time to append one batch of records to the log (not yet durable)",
            m.append.clone(),
        );
        registry.register(
            "log_flush_seconds",
            "Time to make the appended records durable (one fsync per group commit)",
            m.flush.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "How long finished jobs' tests ran, by result recorded since this process started",
            m.job_duration.clone(),
        );
        registry.register(
            "heartbeat_losses",
            "Jobs taken back from runners that went silent or restarted (hand-backs excluded), since this process started",
            m.heartbeat_losses.clone(),
        );
        registry.register(
            "outputs_pruned",
            "Stored test outputs removed by retention, by reason (age, size), since the log began",
            m.pruned.clone(),
        );
        registry.register(
            "outputs_pruned_bytes",
            "Bytes of stored test outputs removed by retention, by reason, since the log began",
            m.pruned_bytes.clone(),
        );
        registry.register(
            "heartbeats_received",
            "Runner heartbeats read, since this process started: idle runners beat at --idle-heartbeat-interval, runners with a job at their own --heartbeat-interval",
            m.heartbeats.clone(),
        );
        registry.register(
            "events",
            "Events appended to the log by kind, since this process started",
            m.events.clone(),
        );
        registry.register(
            "connections",
            "Client connections open now (runners, observers, tools)",
            m.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted since this process started",
            m.accepted.clone(),
        );
        registry.register("queue_length", "Jobs waiting for a runner", m.queue.clone());
        registry.register(
            "runners",
            "Runners known to the dispatcher by state (idle, busy, lost)",
            m.runners.clone(),
        );
        registry.register(
            "jobs",
            "Jobs by status: pending, running, or their outcome",
            m.jobs.clone(),
        );
        registry.register("log_events", "Events in the log", m.log_events.clone());
        Arc::new(Metrics { registry, ..m })
    }

    pub fn appended(&self, took: Duration) {
        self.append.observe(took.as_secs_f64());
    }

    pub fn flushed(&self, took: Duration) {
        self.flush.observe(took.as_secs_f64());
    }

    pub fn heartbeat_received(&self) {
        self.heartbeats.inc();
    }

    pub fn connection_opened(&self) {
        self.accepted.inc();
        self.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    /// Counts what a batch appended.
    pub fn records(&self, records: &[Record]) {
        for r in records {
            self.events
                .get_or_create(&Kind {
                    kind: r.event.kind(),
                })
                .inc();
            match &r.event {
                Event::HeartbeatLost { reason, .. } if *reason != LostReason::HandedBack => {
                    self.heartbeat_losses.inc();
                }
                Event::Result {
                    runner: Some(_),
                    report,
                    ..
                } => self
                    .job_duration
                    .observe(report.duration_ms as f64 / 1000.0),
                _ => {}
            }
        }
    }

    /// The text format, with the state-derived figures from `view`.
    pub fn render(&self, view: &MetricsView) -> String {
        self.queue.set(view.queued as i64);
        self.log_events.set(view.last_seq as i64);
        for (state, n) in &view.runners {
            self.runners
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*n as i64);
        }
        for (status, n) in &view.jobs {
            self.jobs
                .get_or_create(&StatusLabel {
                    status: status.clone(),
                })
                .set(*n as i64);
        }
        for (reason, outputs, bytes) in &view.pruned {
            let label = ReasonLabel {
                reason: reason.clone(),
            };
            self.pruned.get_or_create(&label).set(*outputs as i64);
            self.pruned_bytes.get_or_create(&label).set(*bytes as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CommitId, JobId, JobReport, Outcome};

    #[test]
    fn the_text_format_has_every_figure() {
        let m = Metrics::new();
        m.appended(Duration::from_micros(300));
        m.flushed(Duration::from_millis(2));
        m.connection_opened();
        let commit = CommitId::from_bytes(&[3; 20]).unwrap();
        let report = JobReport {
            outcome: Outcome::Pass,
            exit_code: Some(0),
            duration_ms: 1500,
            tests: None,
            message: String::new(),
        };
        let events = [
            Event::HeartbeatLost {
                runner: "r".into(),
                job: JobId(1),
                attempt: 1,
                reason: LostReason::HeartbeatTimeout,
            },
            Event::HeartbeatLost {
                runner: "r".into(),
                job: JobId(1),
                attempt: 2,
                reason: LostReason::HandedBack,
            },
            Event::Result {
                job: JobId(1),
                commit,
                runner: Some("r".into()),
                attempt: 3,
                report,
                output_bytes: 0,
            },
        ];
        m.records(&Record::run(1, 0, &events));
        let view = MetricsView {
            queued: 4,
            runners: vec![("idle".into(), 2), ("busy".into(), 1), ("lost".into(), 0)],
            jobs: vec![("pending".into(), 4), ("pass".into(), 7)],
            last_seq: 42,
            pruned: vec![("age".into(), 3, 300), ("size".into(), 0, 0)],
        };
        let text = m.render(&view);
        for line in [
            "ci_queue_length 4",
            "ci_runners{state=\"idle\"} 2",
            "ci_runners{state=\"lost\"} 0",
            "ci_jobs{status=\"pass\"} 7",
            "ci_heartbeat_losses_total 1",
            "ci_events_total{kind=\"heartbeat_lost\"} 2",
            "ci_job_duration_seconds_sum 1.5",
            "ci_job_duration_seconds_count 1",
            "ci_log_append_seconds_count 1",
            "ci_log_flush_seconds_count 1",
            "ci_connections 1",
            "ci_connections_accepted_total 1",
            "ci_log_events 42",
            "ci_outputs_pruned{reason=\"age\"} 3",
            "ci_outputs_pruned_bytes{reason=\"age\"} 300",
            "ci_outputs_pruned{reason=\"size\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
