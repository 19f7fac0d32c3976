//! `/metrics`: the server's Prometheus metrics, in Prometheus's text format (0.0.4), which
//! `promtool check metrics` accepts.
//!
//! Two kinds. What the server measures as it goes lives in [`Metrics`] (counters of
//! requests and failures, and latency histograms: each HTTP request by endpoint and status
//! class, each upstream attempt by model and result, the time to a stream's first chunk,
//! and the wait for the decision log's commit). What the learners hold (per arm: calls,
//! failures, spend; per route: decisions and the budget pacer's state) is read from the
//! router at each scrape ([`LearnerStats`]), so it is never a second copy that could drift.
//! Label values are escaped by `prometheus-client`, so any arm id is safe.

use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use quiver_bandit::canary::Stage;
use quiver_bandit::shadow::{CandidateReport, ShadowReport};

use crate::config::RouteConfig;
use crate::deployments::deployment_keys;
use crate::health::{Circuit, Health};
use crate::router::Router;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// An HTTP request: its endpoint (the route's path pattern) and status class (`2xx`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The path pattern, such as `/v1/routes/{name}`; `other` for unknown paths.
    pub endpoint: String,
    /// `2xx`, `4xx`, `5xx`, ...
    pub status: String,
}

/// An upstream call: the model and whether it answered (`ok`), refused the request as the
/// client's error (`refused`) or failed (`error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The configured model id.
    pub model: String,
    /// The upstream's path: `/chat/completions`, `/completions` or `/embeddings`.
    pub path: &'static str,
    /// `ok`, `refused` or `error`.
    pub result: String,
}

/// A prompt embedding that was not to be had: the route and why (`timeout` or `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EmbeddingFallbackLabels {
    /// The route.
    pub route: String,
    /// `timeout`, `busy` (every core of the bundled encoder stayed busy) or `error`.
    pub reason: String,
}

/// A report (feedback or outcome) by what became of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportLabels {
    /// `feedback` or `outcome`.
    pub kind: String,
    /// What became of it: `applied`, `already_applied`, `arm_removed` or `forwarded`.
    pub status: String,
}

/// What came of something: `ok` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// A model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The configured model id.
    pub model: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_from_100us() -> Histogram {
    // 0.1 ms to 13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

fn request_seconds() -> Histogram {
    // 0.1 ms to 210 s: a proxied answer may take the request's whole time limit (120 s
    // by default).
    Histogram::new(exponential_buckets(0.0001, 2.0, 22))
}

fn seconds_from_5ms() -> Histogram {
    // 5 ms to 82 s: model calls.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// What the server measures as it runs.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Answered `/v1/route` requests.
    pub routed: Counter,
    /// Answered `/v1/chat/completions` requests.
    pub proxied: Counter,
    /// Completions a cascade's check failed, escalated to the cascade's stronger model.
    pub cascade_escalations: Counter,
    /// Calls to a fallback model after the decision's own model failed.
    pub fallbacks: Counter,
    /// Upstream attempts that failed (error status, timeout, bad body).
    pub upstream_failures: Counter,
    /// Feedback and outcomes reported over HTTP, by what became of them.
    pub reports: Family<ReportLabels, Counter>,
    /// Snapshots written.
    pub snapshots: Counter,
    /// Snapshots that failed (and were not written).
    pub snapshot_failures: Counter,
    /// Connections turned away at `max_connections` (answered 503 by the connection
    /// handler, outside the app, or closed unanswered when too many wait for that).
    pub overloaded: Counter,
    /// Each HTTP request, from its head read to its answer's head.
    pub http_request_seconds: HistogramFamily<HttpLabels>,
    /// Each upstream attempt, to its whole answer (to its first chunk for a stream).
    pub upstream_attempt_seconds: HistogramFamily<UpstreamLabels>,
    /// Streams: from the call to the first chunk.
    pub time_to_first_token_seconds: HistogramFamily<ModelLabels>,
    /// The wait for the decision log to hold a change durably (write and fsync, shared by
    /// concurrent changes).
    pub log_commit_seconds: Histogram,
    /// Decisions of routes with an embedding block made on hashed features alone.
    pub embedding_fallbacks: Family<EmbeddingFallbackLabels, Counter>,
    /// Requests answered from the response cache.
    pub cache_hits: Counter,
    /// Of those, requests answered by a similar request's answer.
    pub cache_semantic_hits: Counter,
    /// Cacheable requests the cache could not answer.
    pub cache_misses: Counter,
    /// Cache entries evicted to make room.
    pub cache_evictions: Counter,
    /// Bytes the cache holds.
    pub cache_bytes: Gauge,
    /// 1 while the last sync with the cluster's Redis reached it (`crate::cluster`).
    pub cluster_redis_up: Gauge,
    /// Syncs with the cluster, by result.
    pub cluster_syncs: Family<ResultLabels, Counter>,
    /// Bytes of this replica's learning published to the cluster.
    pub cluster_sent_bytes: Counter,
    /// Bytes of other replicas' learning read from the cluster.
    pub cluster_received_bytes: Counter,
    /// Feedback and outcomes accepted here for decisions other replicas made.
    pub cluster_forwarded: Counter,
    /// Of those, the ones their replicas have not confirmed yet.
    pub cluster_forwards_pending: Gauge,
    /// Feedback and outcomes other replicas forwarded here, by result (`applied`,
    /// `repeated`, `refused`).
    pub cluster_forwards_received: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let routed = counter("quiver_routed", "Answered /v1/route requests");
        let proxied = counter(
            "quiver_proxied",
            "Decisions of the proxy (/v1/chat/completions and /v1/completions), whether a model answered or not",
        );
        let cascade_escalations = counter(
            "quiver_cascade_escalations",
            "Calls to a cascade's stronger model after an answer failed the route's check, each a child decision",
        );
        let fallbacks = counter(
            "quiver_fallbacks",
            "Calls to a fallback model after the decision's model failed, each a child decision",
        );
        let upstream_failures = counter("quiver_upstream_failures", "Failed upstream attempts");
        let snapshots = counter("quiver_snapshots", "Snapshots written");
        let snapshot_failures = counter(
            "quiver_snapshot_failures",
            "Snapshots that failed and were not written (the log still holds everything)",
        );
        let overloaded = counter(
            "quiver_overloaded_connections",
            "Connections turned away at max_connections (503, or closed unanswered)",
        );
        let cache_hits = counter("quiver_cache_hits", "Requests answered from the response cache");
        let cache_semantic_hits = counter(
            "quiver_cache_semantic_hits",
            "Requests answered from the response cache by a similar request's answer (also in quiver_cache_hits)",
        );
        let cache_misses = counter(
            "quiver_cache_misses",
            "Cacheable requests the cache could not answer",
        );
        let cache_evictions = counter("quiver_cache_evictions", "Cache entries evicted to make room");
        let cluster_sent_bytes = counter(
            "quiver_cluster_sent_bytes",
            "Bytes of this replica's learning published to the cluster",
        );
        let cluster_received_bytes = counter(
            "quiver_cluster_received_bytes",
            "Bytes of other replicas' learning read from the cluster",
        );
        let cluster_forwarded = counter(
            "quiver_cluster_forwarded",
            "Feedback and outcomes accepted here for decisions other replicas made",
        );
        let http_request_seconds =
            HistogramFamily::new_with_constructor(request_seconds as fn() -> Histogram);
        registry.register(
            "quiver_http_request_seconds",
            "HTTP requests by endpoint and status class, seconds to the answer's head",
            http_request_seconds.clone(),
        );
        let upstream_attempt_seconds =
            HistogramFamily::new_with_constructor(seconds_from_5ms as fn() -> Histogram);
        registry.register(
            "quiver_upstream_attempt_seconds",
            "Upstream attempts by model, path and result, seconds to the answer (to the first chunk for a stream)",
            upstream_attempt_seconds.clone(),
        );
        let time_to_first_token_seconds =
            HistogramFamily::new_with_constructor(seconds_from_5ms as fn() -> Histogram);
        registry.register(
            "quiver_time_to_first_token_seconds",
            "Streamed answers by model, seconds from the call to the first chunk",
            time_to_first_token_seconds.clone(),
        );
        let log_commit_seconds = seconds_from_100us();
        registry.register(
            "quiver_log_commit_seconds",
            "Waits for the decision log to hold a change durably (write and fsync), seconds",
            log_commit_seconds.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "quiver_cache_bytes",
            "Bytes of requests and answers the response cache holds",
            cache_bytes.clone(),
        );
        let cluster_redis_up = Gauge::default();
        registry.register(
            "quiver_cluster_redis_up",
            "1 while the last sync with the cluster's Redis reached it; 0 when it failed or there is no cluster",
            cluster_redis_up.clone(),
        );
        let cluster_syncs = Family::<ResultLabels, Counter>::default();
        registry.register(
            "quiver_cluster_syncs",
            "Syncs with the cluster's Redis, by result (ok, error)",
            cluster_syncs.clone(),
        );
        let cluster_forwards_pending = Gauge::default();
        registry.register(
            "quiver_cluster_forwards_pending",
            "Feedback and outcomes accepted here for other replicas and not yet confirmed by them",
            cluster_forwards_pending.clone(),
        );
        let cluster_forwards_received = Family::<ResultLabels, Counter>::default();
        registry.register(
            "quiver_cluster_forwards_received",
            "Feedback and outcomes other replicas forwarded here, by result (applied, repeated, refused)",
            cluster_forwards_received.clone(),
        );
        let reports = Family::<ReportLabels, Counter>::default();
        registry.register(
            "quiver_reports",
            "Feedback and outcomes reported over HTTP, by kind and by what became of them (applied, \
             already_applied: a repeat, arm_removed, forwarded: to the replica that decided)",
            reports.clone(),
        );
        let embedding_fallbacks = Family::<EmbeddingFallbackLabels, Counter>::default();
        registry.register(
            "quiver_embedding_fallbacks",
            "Decisions of routes with an embedding block made on hashed features alone, by route and reason \
             (timeout, busy: every core of the bundled encoder stayed busy, error)",
            embedding_fallbacks.clone(),
        );
        Metrics {
            registry,
            routed,
            proxied,
            cascade_escalations,
            fallbacks,
            upstream_failures,
            reports,
            snapshots,
            snapshot_failures,
            overloaded,
            http_request_seconds,
            upstream_attempt_seconds,
            time_to_first_token_seconds,
            log_commit_seconds,
            embedding_fallbacks,
            cache_hits,
            cache_semantic_hits,
            cache_misses,
            cache_evictions,
            cache_bytes,
            cluster_redis_up,
            cluster_syncs,
            cluster_sent_bytes,
            cluster_received_bytes,
            cluster_forwarded,
            cluster_forwards_pending,
            cluster_forwards_received,
        }
    }
}

impl Metrics {
    /// Counts a report (`feedback` or `outcome`) by what became of it.
    pub fn reported(&self, kind: &str, status: &str) {
        let labels = ReportLabels {
            kind: kind.to_string(),
            status: status.to_string(),
        };
        self.reports.get_or_create(&labels).inc();
    }

    /// Records an upstream attempt and its result: `ok`, `refused` (the upstream blamed the
    /// request) or `error`.
    pub fn upstream_attempt(&self, model: &str, path: &'static str, result: &str, took: Duration) {
        let labels = UpstreamLabels {
            model: model.to_string(),
            path,
            result: result.to_string(),
        };
        self.upstream_attempt_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Records a stream's time to its first chunk.
    pub fn first_token(&self, model: &str, took: Duration) {
        let labels = ModelLabels {
            model: model.to_string(),
        };
        self.time_to_first_token_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The exposition: these metrics, then the learners'.
    pub fn render(&self, learners: LearnerStats) -> String {
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(learners));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.registry)
            .and_then(|()| prometheus_text::encode(&mut text, &scrape));
        text
    }
}

/// One arm's totals, as its learner holds them.
#[derive(Debug, Clone, PartialEq)]
struct ArmTotals {
    route: String,
    arm: String,
    requests: u64,
    errors: u64,
    spend_usd: f64,
    /// Input and output tokens.
    tokens: (f64, f64),
}

/// One route's decisions and budget.
#[derive(Debug, Clone, PartialEq)]
struct RouteTotals {
    route: String,
    decisions: u64,
    /// The pacer's dual multiplier, target and debt, when the route has a budget.
    budget: Option<(f64, f64, f64)>,
    /// Spend this UTC day and month, USD.
    spend: (f64, f64),
    /// This month's savings against the dearest model, USD.
    savings: f64,
    /// Requests refused at a spend cap.
    spend_cap_refusals: u64,
    /// The route's shadow candidates' estimates, if it has candidates.
    candidates: Option<ShadowReport>,
    /// Each caller's spend this UTC day and month, USD.
    callers: Vec<(String, f64, f64)>,
    /// On a replica of a cluster, the route's figures across it.
    cluster: Option<crate::router::ClusterFigures>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeriodLabels {
    route: String,
    period: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallerPeriodLabels {
    route: String,
    caller: String,
    period: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CandidateLabels {
    route: String,
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    route: String,
    policy: String,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EstimateLabels {
    route: String,
    policy: String,
    metric: String,
    estimator: String,
    bound: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CircuitLabels {
    route: String,
    arm: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentCircuitLabels {
    route: String,
    deployment: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmLabels {
    route: String,
    arm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    route: String,
    arm: String,
    direction: &'static str,
}

/// What the learners and the log hold, read at a scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LearnerStats {
    arms: Vec<ArmTotals>,
    routes: Vec<RouteTotals>,
    log_records: u64,
    log_fsyncs: u64,
    /// Each arm's circuit breaker, in the order of `arms`.
    circuits: Vec<Circuit>,
    /// Each deployment's circuit breaker: route, `model@deployment`, state.
    deployment_circuits: Vec<(String, String, Circuit)>,
}

impl LearnerStats {
    /// Reads every route's learner and the log's counts.
    pub fn read(router: &Router) -> crate::Result<LearnerStats> {
        let mut arms = Vec::new();
        let mut routes = Vec::new();
        for route in router.route_names() {
            // Each read takes the route's lock: the spend before the learner, which holds it.
            let (spend, savings) = (router.spend(&route)?, router.savings(&route)?);
            let callers = router.caller_spend(&route)?;
            let spend_cap_refusals = router.spend_cap_refusals(&route)?;
            let cluster = router.cluster_figures(&route)?;
            let candidates = router.candidates(&route)?;
            let learner = router.learner(&route)?;
            for (i, arm) in learner.arms().iter().enumerate() {
                let usage = learner.usage(i);
                arms.push(ArmTotals {
                    route: route.clone(),
                    arm: arm.id.clone(),
                    requests: usage.requests,
                    errors: usage.errors,
                    spend_usd: usage.cost_usd,
                    tokens: (usage.input_tokens, usage.output_tokens),
                });
            }
            routes.push(RouteTotals {
                route: route.clone(),
                decisions: learner.next_decision_id(),
                budget: learner.pacer().map(|p| (p.lambda(), p.target_usd(), p.debt())),
                spend,
                savings,
                spend_cap_refusals,
                callers,
                cluster,
                candidates,
            });
        }
        let (log_records, log_fsyncs) = router.log_counts();
        Ok(LearnerStats {
            arms,
            routes,
            log_records,
            log_fsyncs,
            circuits: Vec::new(),
            deployment_circuits: Vec::new(),
        })
    }

    /// Adds each arm's circuit breaker state, and each deployment's of the `routes`, as
    /// `health` holds them `now`.
    pub fn with_circuits(mut self, health: &Health, routes: &[RouteConfig], now: Instant) -> Self {
        self.circuits = self
            .arms
            .iter()
            .map(|a| health.circuit(&a.route, &a.arm, now))
            .collect();
        self.deployment_circuits = routes
            .iter()
            .flat_map(|r| r.models.iter().map(move |m| (r, m)))
            .flat_map(|(r, m)| {
                deployment_keys(m).into_iter().map(move |key| {
                    let circuit = health.circuit(&r.name, &key, now);
                    (r.name.clone(), key, circuit)
                })
            })
            .collect();
        self
    }
}

/// Encodes one metric family: a descriptor, then one value per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A route's spend of the day and of the month, as gauges labelled by period.
fn by_period(route: &str, (day, month): (f64, f64)) -> [(PeriodLabels, ConstGauge<f64>); 2] {
    [("day", day), ("month", month)].map(|(period, usd)| {
        let labels = PeriodLabels {
            route: route.to_string(),
            period: period.to_string(),
        };
        (labels, ConstGauge::new(usd))
    })
}

impl Collector for LearnerStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let arm = |a: &ArmTotals| ArmLabels {
            route: a.route.clone(),
            arm: a.arm.clone(),
        };
        let route = |r: &RouteTotals| RouteLabel {
            route: r.route.clone(),
        };
        family(
            &mut encoder,
            "quiver_arm_requests",
            "Outcomes recorded per route and arm.",
            MetricType::Counter,
            self.arms.iter().map(|a| (arm(a), ConstCounter::new(a.requests))),
        )?;
        family(
            &mut encoder,
            "quiver_arm_errors",
            "Failed calls per route and arm.",
            MetricType::Counter,
            self.arms.iter().map(|a| (arm(a), ConstCounter::new(a.errors))),
        )?;
        family(
            &mut encoder,
            "quiver_arm_spend_usd",
            "Spend per route and arm, USD.",
            MetricType::Counter,
            self.arms.iter().map(|a| (arm(a), ConstCounter::new(a.spend_usd))),
        )?;
        family(
            &mut encoder,
            "quiver_arm_tokens",
            "Tokens per route and arm, `input` (billed, or estimated) and `output` (billed).",
            MetricType::Counter,
            self.arms.iter().flat_map(|a| {
                [("input", a.tokens.0), ("output", a.tokens.1)].map(|(direction, n)| {
                    let labels = TokenLabels {
                        route: a.route.clone(),
                        arm: a.arm.clone(),
                        direction,
                    };
                    (labels, ConstCounter::new(n))
                })
            }),
        )?;
        family(
            &mut encoder,
            "quiver_decisions",
            "Decisions per route.",
            MetricType::Counter,
            self.routes
                .iter()
                .map(|r| (route(r), ConstCounter::new(r.decisions))),
        )?;
        let states = [
            (Circuit::Closed, "closed"),
            (Circuit::Open, "open"),
            (Circuit::HalfOpen, "half_open"),
        ];
        family(
            &mut encoder,
            "quiver_circuit_state",
            "Each model's circuit breaker per route: 1 for its state, 0 for the others.",
            MetricType::Gauge,
            self.arms.iter().zip(&self.circuits).flat_map(|(a, &circuit)| {
                states.iter().map(move |&(state, name)| {
                    let labels = CircuitLabels {
                        route: a.route.clone(),
                        arm: a.arm.clone(),
                        state: name.to_string(),
                    };
                    (labels, ConstGauge::new(i64::from(state == circuit)))
                })
            }),
        )?;
        family(
            &mut encoder,
            "quiver_deployment_circuit_state",
            "Each deployment's circuit breaker per route: 1 for its state, 0 for the others.",
            MetricType::Gauge,
            self.deployment_circuits.iter().flat_map(|(route, key, circuit)| {
                states.iter().map(move |&(state, name)| {
                    let labels = DeploymentCircuitLabels {
                        route: route.clone(),
                        deployment: key.clone(),
                        state: name.to_string(),
                    };
                    (labels, ConstGauge::new(i64::from(state == *circuit)))
                })
            }),
        )?;
        family(
            &mut encoder,
            "quiver_route_spend_usd",
            "Spend per route in the current UTC day and month, USD (on this replica; caps count the cluster's, quiver_cluster_route_spend_usd).",
            MetricType::Gauge,
            self.routes.iter().flat_map(|r| by_period(&r.route, r.spend)),
        )?;
        family(
            &mut encoder,
            "quiver_caller_spend_usd",
            "Spend per route and caller (a digest of its token) in the current UTC day and month, USD (what caller spend caps count).",
            MetricType::Gauge,
            self.routes.iter().flat_map(|r| {
                r.callers.iter().flat_map(|(caller, day, month)| {
                    [("day", *day), ("month", *month)].map(|(period, usd)| {
                        let labels = CallerPeriodLabels {
                            route: r.route.clone(),
                            caller: caller.clone(),
                            period: period.to_string(),
                        };
                        (labels, ConstGauge::new(usd))
                    })
                })
            }),
        )?;
        family(
            &mut encoder,
            "quiver_route_savings_usd",
            "This UTC month's calls per route on its dearest model at list prices, minus what they cost, USD.",
            MetricType::Gauge,
            self.routes
                .iter()
                .map(|r| (route(r), ConstGauge::new(r.savings))),
        )?;
        family(
            &mut encoder,
            "quiver_spend_cap_refusals",
            "Requests per route refused at a spend cap (429), the route's or a caller's, since the server started.",
            MetricType::Counter,
            self.routes
                .iter()
                .map(|r| (route(r), ConstCounter::new(r.spend_cap_refusals))),
        )?;
        let candidates = || {
            self.routes.iter().flat_map(|r| {
                r.candidates
                    .iter()
                    .flat_map(|report| &report.candidates)
                    .map(move |c| (r, c))
            })
        };
        let candidate_labels = |r: &RouteTotals, c: &CandidateReport| CandidateLabels {
            route: r.route.clone(),
            policy: c.policy.clone(),
        };
        family(
            &mut encoder,
            "quiver_shadow_estimate",
            "Each shadow candidate's off-policy estimate per route, by metric (value, quality, cost_usd), estimator (snips, dr) and bound (value, lower and upper of the 95% interval).",
            MetricType::Gauge,
            candidates().flat_map(|(r, c)| {
                [("value", &c.value), ("quality", &c.quality), ("cost_usd", &c.cost_usd)]
                    .into_iter()
                    .flat_map(|(metric, m)| [("snips", &m.snips), ("dr", &m.dr)].map(|(e, i)| (metric, e, i)))
                    .flat_map(move |(metric, estimator, interval)| {
                        let ci = interval.ci95.map_or([None, None], |[lo, hi]| [Some(lo), Some(hi)]);
                        [("value", interval.value), ("lower", ci[0]), ("upper", ci[1])]
                            .into_iter()
                            .filter_map(move |(bound, v)| {
                                let labels = EstimateLabels {
                                    route: r.route.clone(),
                                    policy: c.policy.clone(),
                                    metric: metric.to_string(),
                                    estimator: estimator.to_string(),
                                    bound: bound.to_string(),
                                };
                                v.map(|v| (labels, ConstGauge::new(v)))
                            })
                    })
            }),
        )?;
        family(
            &mut encoder,
            "quiver_shadow_effective_sample_size",
            "Kish's effective sample size of each shadow candidate's importance weights per route.",
            MetricType::Gauge,
            candidates().map(|(r, c)| (candidate_labels(r, c), ConstGauge::new(c.effective_sample_size))),
        )?;
        family(
            &mut encoder,
            "quiver_shadow_lift_over_hull",
            "Each shadow candidate's quality (DR) minus the best fixed mix of two models at its cost, per route.",
            MetricType::Gauge,
            candidates().filter_map(|(r, c)| {
                c.lift_over_hull
                    .map(|lift| (candidate_labels(r, c), ConstGauge::new(lift)))
            }),
        )?;
        let canaries = || {
            self.routes.iter().filter_map(|r| {
                let canary = r.candidates.as_ref()?.canary.as_ref()?;
                let labels = CandidateLabels {
                    route: r.route.clone(),
                    policy: canary.policy.clone(),
                };
                Some((labels, canary))
            })
        };
        family(
            &mut encoder,
            "quiver_canary_stage",
            "Each route's canary: 1 for its stage (canary, promoted, rolled_back), 0 for the others.",
            MetricType::Gauge,
            canaries().flat_map(|(labels, canary)| {
                [Stage::Canary, Stage::Promoted, Stage::RolledBack].map(|stage| {
                    let labels = StageLabels {
                        route: labels.route.clone(),
                        policy: labels.policy.clone(),
                        stage: stage.name().to_string(),
                    };
                    (labels, ConstGauge::new(i64::from(stage == canary.stage)))
                })
            }),
        )?;
        family(
            &mut encoder,
            "quiver_canary_serving_share",
            "Each route's canary's share of new decisions.",
            MetricType::Gauge,
            canaries().map(|(labels, canary)| (labels, ConstGauge::new(canary.serving_share))),
        )?;
        family(
            &mut encoder,
            "quiver_canary_gate_blocked",
            "1 while an operator has blocked the gate of the route's canary.",
            MetricType::Gauge,
            canaries().map(|(labels, canary)| (labels, ConstGauge::new(i64::from(canary.blocked)))),
        )?;
        family(
            &mut encoder,
            "quiver_canary_promotions",
            "Promotions of each route's canary in its log.",
            MetricType::Counter,
            canaries().map(|(labels, canary)| (labels, ConstCounter::new(canary.promotions))),
        )?;
        family(
            &mut encoder,
            "quiver_canary_rollbacks",
            "Rollbacks of each route's canary in its log.",
            MetricType::Counter,
            canaries().map(|(labels, canary)| (labels, ConstCounter::new(canary.rollbacks))),
        )?;
        let clustered = || {
            self.routes
                .iter()
                .filter_map(|r| r.cluster.as_ref().map(|c| (r, c)))
        };
        family(
            &mut encoder,
            "quiver_cluster_decisions",
            "Decisions per route across the cluster, as this replica knows them.",
            MetricType::Gauge,
            clustered().map(|(r, c)| (route(r), ConstGauge::new(c.decisions as i64))),
        )?;
        family(
            &mut encoder,
            "quiver_cluster_route_spend_usd",
            "Spend per route across the cluster in the current UTC day and month, USD, as this replica knows it (what spend caps count).",
            MetricType::Gauge,
            clustered().flat_map(|(r, c)| by_period(&r.route, c.spend)),
        )?;
        let budgeted = || self.routes.iter().filter_map(|r| r.budget.map(|b| (r, b)));
        family(
            &mut encoder,
            "quiver_budget_lambda",
            "The budget pacer's dual multiplier per route (0 while the budget does not bind).",
            MetricType::Gauge,
            budgeted().map(|(r, (lambda, _, _))| (route(r), ConstGauge::new(lambda))),
        )?;
        family(
            &mut encoder,
            "quiver_budget_target_usd",
            "The budget per request per route, USD.",
            MetricType::Gauge,
            budgeted().map(|(r, (_, target, _))| (route(r), ConstGauge::new(target))),
        )?;
        family(
            &mut encoder,
            "quiver_budget_debt",
            "Spend per route, in budgets, that the pacer has yet to count (it takes at most two budgets per call).",
            MetricType::Gauge,
            budgeted().map(|(r, (_, _, debt))| (route(r), ConstGauge::new(debt))),
        )?;
        let mut total = |name: &str, help: &str, value: u64| -> Result<(), std::fmt::Error> {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)
        };
        total(
            "quiver_log_records",
            "Decision log records, all time (the last sequence number).",
            self.log_records,
        )?;
        total(
            "quiver_log_fsyncs",
            "Group commits of the decision log since start.",
            self.log_fsyncs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Learner totals render as counters and gauges with their labels escaped: an arm id
    /// may hold quotes, backslashes and newlines.
    #[test]
    fn learner_stats_render_with_escaped_labels() {
        let stats = LearnerStats {
            arms: vec![ArmTotals {
                route: "r".into(),
                arm: "we\"ird\\arm\nid".into(),
                requests: 3,
                errors: 1,
                spend_usd: 0.25,
                tokens: (120.0, 80.0),
            }],
            routes: vec![RouteTotals {
                route: "r".into(),
                decisions: 4,
                budget: Some((0.5, 0.001, 3.0)),
                spend: (1.5, 20.25),
                savings: 4.5,
                spend_cap_refusals: 2,
                callers: vec![("0123456789abcdef".into(), 0.5, 7.0)],
                cluster: Some(crate::router::ClusterFigures {
                    replica: "a".into(),
                    other_replicas: vec!["b".into()],
                    decisions: 9,
                    spend: (2.5, 30.0),
                    savings: 6.0,
                }),
                candidates: None,
            }],
            log_records: 9,
            log_fsyncs: 2,
            circuits: vec![Circuit::HalfOpen],
            deployment_circuits: vec![("r".into(), "m@eu".into(), Circuit::Open)],
        };
        let metrics = Metrics::default();
        metrics.routed.inc();
        let text = metrics.render(stats);
        for line in [
            "# TYPE quiver_arm_requests_total counter",
            "quiver_arm_requests_total{route=\"r\",arm=\"we\\\"ird\\\\arm\\nid\"} 3",
            "quiver_arm_errors_total{route=\"r\",arm=\"we\\\"ird\\\\arm\\nid\"} 1",
            "quiver_arm_spend_usd_total{route=\"r\",arm=\"we\\\"ird\\\\arm\\nid\"} 0.25",
            "quiver_arm_tokens_total{route=\"r\",arm=\"we\\\"ird\\\\arm\\nid\",direction=\"input\"} 120.0",
            "quiver_arm_tokens_total{route=\"r\",arm=\"we\\\"ird\\\\arm\\nid\",direction=\"output\"} 80.0",
            "quiver_decisions_total{route=\"r\"} 4",
            "quiver_budget_lambda{route=\"r\"} 0.5",
            "quiver_budget_target_usd{route=\"r\"} 0.001",
            "quiver_budget_debt{route=\"r\"} 3.0",
            "quiver_route_spend_usd{route=\"r\",period=\"day\"} 1.5",
            "quiver_route_spend_usd{route=\"r\",period=\"month\"} 20.25",
            "quiver_route_savings_usd{route=\"r\"} 4.5",
            "quiver_spend_cap_refusals_total{route=\"r\"} 2",
            "quiver_cluster_decisions{route=\"r\"} 9",
            "quiver_cluster_route_spend_usd{route=\"r\",period=\"day\"} 2.5",
            "quiver_cluster_route_spend_usd{route=\"r\",period=\"month\"} 30.0",
            "quiver_caller_spend_usd{route=\"r\",caller=\"0123456789abcdef\",period=\"day\"} 0.5",
            "quiver_caller_spend_usd{route=\"r\",caller=\"0123456789abcdef\",period=\"month\"} 7.0",
            "quiver_log_records_total 9",
            "quiver_log_fsyncs_total 2",
            "quiver_circuit_state{route=\"r\",arm=\"we\\\"ird\\\\arm\\nid\",state=\"half_open\"} 1",
            "quiver_circuit_state{route=\"r\",arm=\"we\\\"ird\\\\arm\\nid\",state=\"open\"} 0",
            "quiver_routed_total 1",
            "quiver_deployment_circuit_state{route=\"r\",deployment=\"m@eu\",state=\"open\"} 1",
            "quiver_deployment_circuit_state{route=\"r\",deployment=\"m@eu\",state=\"closed\"} 0",
            "# TYPE quiver_log_commit_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    /// A proxied answer may take the request's whole time limit (120 s by default): the
    /// request histogram's buckets reach past it, so that its quantiles do.
    #[test]
    fn request_buckets_reach_past_the_request_time_limit() {
        let metrics = Metrics::default();
        let labels = HttpLabels {
            endpoint: "/v1/chat/completions".into(),
            status: "2xx".into(),
        };
        metrics.http_request_seconds.get_or_create(&labels).observe(119.0);
        let text = metrics.render(LearnerStats::default());
        let finite = text
            .lines()
            .filter(|l| l.starts_with("quiver_http_request_seconds_bucket") && !l.contains("+Inf"))
            .filter(|l| l.ends_with(" 1"))
            .count();
        assert!(finite > 0, "{text}");
    }
}
