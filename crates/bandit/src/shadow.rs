//! Shadow candidates: policies that run beside a route's live policy on its live traffic,
//! deciding on every request without serving any, and whose value is estimated off-policy
//! as the outcomes come in, so that an operator sees whether one would do better before
//! letting it serve.
//!
//! Each candidate is a [`Learner`] of its own over the route's arms, context and
//! objective. On every live decision it decides on the same request (its PMF, nothing
//! served); when the live decision's outcome and quality are known it **learns them as if
//! it had chosen that arm, unweighted**, as `quiver ope` runs a learning candidate along a
//! log. No importance weight is needed for that: every policy Quiver has learns a
//! per-arm model of quality given the context (a ridge per arm, or an arm's mean), and a
//! regression on the context is unbiased whichever policy chose the rows it sees, as long
//! as the choice depended on the context alone; the logged policy changes only where the
//! candidate's data is dense. What the candidate learns is what it would learn from the
//! live log, not from its own choices, so its estimate is the value of *this* sequence of
//! candidate policies (the martingale argument of Dudik et al. 2012 and Li et al. 2011).
//!
//! Each completed decision `i` (live arm `a_i`, propensity `mu_i`) adds one row per metric
//! (value `quality - w_cost cost - w_latency latency_s` under the route's objective,
//! quality, cost) to [`crate::ope`]'s estimators, SNIPS and DR with their delta-method
//! 95% intervals and the weights' effective sample size. DR's reward model `q(x, a)` is a
//! ridge per arm and metric fitted on the rows completed before the decision was made
//! (prequential, so no row is predicted by a model that saw it). Beside the candidates:
//! the incumbent's own mean of each metric (the rows as logged), and each model's
//! quality and cost as a fixed policy would get them (SNIPS with target `1[a_i = k]`), whose
//! frontier is the hull a candidate is compared with ([`crate::hull`]).
//!
//! A decision completes when its quality is known (from the outcome, a failed call
//! counting 0, or from feedback) and its outcome too; one still waiting when
//! `max_pending` newer decisions have come is completed with what it has (its cost, if its
//! outcome came; it then counts for cost only, as `quiver ope` skips rows without quality).
//! Meanwhile each candidate holds the served decision as a learner that served it would
//! (see `learner/held.rs`), so that a LinUCB candidate, or canary, explores under late
//! qualities as a live LinUCB route does instead of repeating its choice until the first
//! quality comes.
//!
//! On a route with a budget, a candidate's pacer steps on what it would have spent: DR's
//! estimate of its cost on each decision whose outcome came (clipped at 0), since it pays
//! for nothing itself. Until the outcome comes it paces ahead of the decision at the cost
//! it expected of it (see `BudgetPacer::ahead`), as a route paces ahead of its calls under
//! way; only the latest [`MAX_STEPS_AT_ONCE`] pending decisions are looked at, to bound
//! the work. One candidate may serve a share of the traffic as a canary
//! ([`crate::canary`]).

use std::collections::VecDeque;

use serde::Serialize;

use crate::arm::Arm;
use crate::canary::{CanaryReport, CanaryRule, Gate, Stage, Verdict};
use crate::error::Result;
use crate::hull;
use crate::learner::{Learner, LearnerConfig, PmfChoice, Request};
use crate::ope::{Dr, Estimator, OpeInputs, Snips, TermMoments, WeightStream};
use crate::outcome::{credited_quality, Objective, Outcome, MAX_STEPS_AT_ONCE};
use crate::policy::PolicySpec;
use crate::prior::Priors;
use crate::ridge::RidgeTable;
use crate::stats::Forgetting;

/// Ridge of the DR reward models (as the simulator's cross-fitted one).
const REWARD_MODEL_LAMBDA: f64 = 1.0;

/// A completed decision's metrics: `[value, quality, cost]`, `None` where unobserved.
type Observed = [Option<f64>; 3];

/// The index of cost among the metrics.
const COST: usize = 2;

/// One row of estimator inputs for a decision logged with `propensity`, rewritten
/// ([`set_row`]) for each metric and each policy valued on it.
fn row_of(propensity: f64) -> OpeInputs {
    OpeInputs {
        reward: vec![0.0],
        propensity: vec![propensity],
        target: vec![0.0],
        q_logged: vec![0.0],
        dm: vec![0.0],
        accepted: vec![false],
        clip: f64::INFINITY,
        switch_tau: f64::INFINITY,
    }
}

/// Writes into `row` a metric's value `r` and its reward model's prediction `q` for the
/// logged arm, and a policy's probability `target` of that arm, its model-based value
/// `dm` and whether it drew the arm (`accepted`).
fn set_row(row: &mut OpeInputs, r: f64, q: f64, target: f64, dm: f64, accepted: bool) {
    row.reward[0] = r;
    row.q_logged[0] = q;
    row.target[0] = target;
    row.dm[0] = dm;
    row.accepted[0] = accepted;
}

/// Writes into `row` a metric's value `r` on a decision that served arm `logged`, its
/// reward model having predicted `q` for every arm, as candidate `choice` values it.
fn set_candidate_row(row: &mut OpeInputs, r: f64, q: &[f64], logged: usize, choice: &PmfChoice) {
    let dm = choice.pmf.iter().zip(q).map(|(w, q)| w * q).sum();
    set_row(row, r, q[logged], choice.pmf[logged], dm, choice.arm == logged);
}

/// A live decision awaiting its outcome or quality.
struct PendingDecision {
    id: u64,
    arm: usize,
    propensity: f64,
    request: Request,
    /// Each reward model's prediction for every arm when the decision was made.
    q: [Vec<f64>; 3],
    /// Each candidate's decision: its PMF over the arms and the arm it drew.
    candidates: Vec<PmfChoice>,
    /// Whether the canary served it.
    canary_served: bool,
    outcome: Option<Outcome>,
    quality: Option<f64>,
}

/// SNIPS and DR of one metric for one candidate, with the weights' diagnostics.
#[derive(Default)]
struct MetricEstimates {
    weights: WeightStream,
    snips: TermMoments,
    dr: TermMoments,
}

impl MetricEstimates {
    fn add(&mut self, row: &OpeInputs) {
        self.weights.add(row);
        self.snips.add_rows(&Snips, row);
        self.dr.add_rows(&Dr, row);
    }
}

/// What a fixed policy on one model would get: SNIPS of quality and cost, with target
/// `1[a_i = k]`.
#[derive(Clone, Default)]
struct FixedModel {
    chosen: usize,
    quality: TermMoments,
    cost: TermMoments,
}

/// A candidate policy running in the shadow of the live one.
struct Candidate {
    policy: String,
    learner: Learner,
    metrics: [MetricEstimates; 3],
}

/// A route's shadow candidates and what they are compared with.
pub struct Shadows {
    objective: Objective,
    arms: Vec<String>,
    candidates: Vec<Candidate>,
    pending: VecDeque<PendingDecision>,
    max_pending: usize,
    reward_models: [RidgeTable; 3],
    /// The incumbent's own mean of each metric.
    incumbent: [TermMoments; 3],
    /// Per model, the quality and cost a fixed policy on it would get.
    models: Vec<FixedModel>,
    decisions: u64,
    /// The canary, if one of the candidates serves: its index and gate.
    canary: Option<(usize, Gate)>,
    /// The route's seed, for the canary's coins.
    seed: u64,
}

/// The candidates' decisions on a request, taken before the route's decision is logged
/// (see [`Shadows::decide`]).
pub struct Draws {
    candidates: Vec<PmfChoice>,
    canary_serves: bool,
}

impl Draws {
    /// Each candidate's decision, in the order of the candidates.
    pub fn choices(&self) -> &[PmfChoice] {
        &self.candidates
    }
}

/// An estimate and its 95% interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Interval {
    /// Point estimate (`null` before any row).
    pub value: Option<f64>,
    /// Delta-method 95% interval (`null` under two rows that move the estimate: of a
    /// ratio, rows that carry weight).
    pub ci95: Option<[f64; 2]>,
}

impl Interval {
    pub(crate) fn of(moments: &TermMoments, estimator: &dyn Estimator) -> Interval {
        let report = moments.report(estimator, None);
        let finite = |v: f64| v.is_finite().then_some(v);
        // No weight on any row leaves the estimate, and so its interval, undefined.
        Interval {
            value: finite(report.value),
            ci95: report.ci95_analytic.filter(|i| i.iter().all(|v| v.is_finite())),
        }
    }
}

/// One metric's estimates for a candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricReport {
    /// Rows where the metric was observed.
    pub rows: usize,
    /// Self-normalized importance sampling.
    pub snips: Interval,
    /// Doubly robust, with the prequential reward model.
    pub dr: Interval,
}

/// A candidate's estimates.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CandidateReport {
    /// Its policy spec, canonical.
    pub policy: String,
    /// Kish's effective sample size of its importance weights on the value's rows.
    pub effective_sample_size: f64,
    /// `quality - w_cost cost - w_latency latency_s` under the route's objective.
    pub value: MetricReport,
    /// Quality.
    pub quality: MetricReport,
    /// Cost in USD per request.
    pub cost_usd: MetricReport,
    /// The hull's quality at the candidate's estimated cost (DR): the best a fixed mix of
    /// at most two models gets for that spend.
    pub hull_quality_at_cost: Option<f64>,
    /// The candidate's quality (DR) minus [`CandidateReport::hull_quality_at_cost`].
    pub lift_over_hull: Option<f64>,
}

/// The incumbent's own means: of the route's decisions as served, the canary's among them
/// while a canary serves a share.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IncumbentReport {
    /// Rows with a value.
    pub rows: usize,
    /// Mean value.
    pub value: Interval,
    /// Mean quality.
    pub quality: Interval,
    /// Mean cost in USD.
    pub cost_usd: Interval,
    /// The hull's quality at the incumbent's mean cost.
    pub hull_quality_at_cost: Option<f64>,
    /// Its mean quality minus the hull's.
    pub lift_over_hull: Option<f64>,
}

/// One model as a fixed policy would do.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelReport {
    /// The model.
    pub model: String,
    /// Completed decisions that chose it.
    pub rows: usize,
    /// Its quality (SNIPS).
    pub quality: Interval,
    /// Its cost per request in USD (SNIPS).
    pub cost_usd: Interval,
}

/// Everything the shadows estimate, as `GET /v1/routes/{name}/candidates` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShadowReport {
    /// Live decisions seen.
    pub decisions: u64,
    /// Decisions still waiting for their outcome or quality.
    pub pending: usize,
    /// The route's decisions as served.
    pub incumbent: IncumbentReport,
    /// The candidates, in configured order.
    pub candidates: Vec<CandidateReport>,
    /// The models.
    pub models: Vec<ModelReport>,
    /// The hull's corners, `[cost_usd, quality]`, by cost.
    pub hull: Vec<[f64; 2]>,
    /// The candidate serving as a canary, if any.
    pub canary: Option<CanaryReport>,
}

impl Shadows {
    /// Candidates `specs` beside a route whose learner has `config` over `arms`; a
    /// decision waits for its outcome and quality while fewer than `max_pending` newer
    /// ones have come.
    pub fn new(
        specs: &[PolicySpec],
        config: &LearnerConfig,
        arms: &[Arm],
        max_pending: usize,
    ) -> Result<Self> {
        let candidates = specs
            .iter()
            .map(|spec| {
                let mut config = config.clone();
                config.policy = spec.clone();
                config.seed = crate::ope::candidate_seed(config.seed);
                // Its decisions are only read, never resolved: it learns through `learn`.
                config.max_tracked_decisions = 1;
                Ok(Candidate {
                    policy: spec.to_string(),
                    learner: Learner::new(config, arms.to_vec())?,
                    metrics: Default::default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ridge =
            || RidgeTable::with_prior(arms.len(), config.dim, REWARD_MODEL_LAMBDA, Forgetting::None, 0.0);
        Ok(Shadows {
            objective: config.objective,
            arms: arms.iter().map(|a| a.id.clone()).collect(),
            candidates,
            pending: VecDeque::new(),
            max_pending: max_pending.max(1),
            reward_models: [ridge(), ridge(), ridge()],
            incumbent: Default::default(),
            models: vec![Default::default(); arms.len()],
            decisions: 0,
            canary: None,
            seed: config.seed,
        })
    }

    /// Starts every candidate, the canary's among them, from `priors`, as the route's
    /// own learner starts: a candidate is compared with the route on equal terms.
    pub fn absorb_priors(&mut self, priors: &Priors) -> Result<()> {
        for candidate in &mut self.candidates {
            candidate.learner.absorb_priors(priors)?;
        }
        Ok(())
    }

    /// Lets candidate `index` serve as a canary under `rule`, starting in
    /// [`Stage::Canary`].
    pub fn with_canary(mut self, index: usize, rule: CanaryRule) -> Result<Self> {
        if index >= self.candidates.len() {
            return Err(crate::ErrorKind::InvalidConfig(format!(
                "canary candidate {index}: there are {} candidates",
                self.candidates.len()
            ))
            .into());
        }
        self.canary = Some((index, Gate::new(rule)?));
        Ok(self)
    }

    /// Each candidate decides on `request`, decision `id` of the route, and the canary's
    /// coin says whether it serves (see [`Shadows::canary_arm`] and
    /// [`Shadows::propensity`]); then [`Shadows::record`] takes the logged decision.
    pub fn decide(&mut self, id: u64, request: &Request) -> Result<Draws> {
        let mut ahead: Option<Request> = None;
        let mut candidates = Vec::with_capacity(self.candidates.len());
        // A budget's pacer steps as the outcomes come: each candidate paces ahead of the
        // latest decisions still awaiting theirs, at what it expected each to cost.
        let latest = self.pending.len().saturating_sub(MAX_STEPS_AT_ONCE as usize);
        for (i, c) in self.candidates.iter_mut().enumerate() {
            let choice = if c.learner.pacer().is_some() {
                let ahead = ahead.get_or_insert_with(|| request.clone());
                let awaiting = self.pending.range(latest..).filter(|p| p.outcome.is_none());
                ahead.costs_under_way.clear();
                ahead
                    .costs_under_way
                    .extend(awaiting.map(|p| p.candidates[i].expected_cost_usd));
                c.learner.decide_pmf(ahead)?
            } else {
                c.learner.decide_pmf(request)?
            };
            candidates.push(choice);
        }
        let canary_serves = self
            .canary
            .as_ref()
            .is_some_and(|(_, gate)| gate.serves(self.seed, id));
        Ok(Draws {
            candidates,
            canary_serves,
        })
    }

    /// The arm the canary drew, when the coin lets it serve the decision of `draws`.
    pub fn canary_arm(&self, draws: &Draws) -> Option<&str> {
        let (index, _) = self.canary.as_ref().filter(|_| draws.canary_serves)?;
        Some(&self.arms[draws.candidates[*index].arm])
    }

    /// The probability with which the route serves `arm` in the decision of `draws`,
    /// when its own policy gives it `route_probability`: the mixture with the canary's.
    pub fn propensity(&self, draws: &Draws, arm: &str, route_probability: f64) -> f64 {
        let (Some((index, gate)), Some(a)) = (&self.canary, self.arms.iter().position(|m| m == arm)) else {
            return route_probability;
        };
        gate.propensity(route_probability, draws.candidates[*index].pmf[a])
    }

    /// The route served `arm` with `propensity` for `request` as decision `id`:
    /// [`Shadows::decide`], then [`Shadows::record`], for a decision already made (read
    /// from the log, say), whose record says whether the canary served it when it can
    /// (`canary_served`; else the coin tells).
    pub fn decided(
        &mut self,
        id: u64,
        request: Request,
        arm: &str,
        propensity: f64,
        canary_served: Option<bool>,
    ) -> Result<()> {
        let mut draws = self.decide(id, &request)?;
        if let Some(served) = canary_served.filter(|_| self.canary.is_some()) {
            draws.canary_serves = served;
        }
        self.record(id, request, arm, propensity, draws)
    }

    /// The route served `arm` with `propensity` for `request` as decision `id`, after the
    /// candidates' `draws` ([`Shadows::decide`]). Decisions come in increasing `id`.
    pub fn record(
        &mut self,
        id: u64,
        request: Request,
        arm: &str,
        propensity: f64,
        draws: Draws,
    ) -> Result<()> {
        let Some(arm) = self.arms.iter().position(|a| a == arm) else {
            return Ok(());
        };
        let x = &request.context.features;
        let q = std::array::from_fn(|m| {
            (0..self.arms.len())
                .map(|a| self.reward_models[m].get(a).mean(x))
                .collect()
        });
        // Each candidate will learn the served arm's outcome: held until then, as a
        // learner that had served it would hold it.
        for (c, choice) in self.candidates.iter_mut().zip(&draws.candidates) {
            c.learner.hold_untracked(choice.id, arm, x)?;
        }
        self.pending.push_back(PendingDecision {
            id,
            arm,
            propensity,
            request,
            q,
            candidates: draws.candidates,
            canary_served: draws.canary_serves,
            outcome: None,
            quality: None,
        });
        self.decisions += 1;
        while self.pending.len() > self.max_pending {
            if let Some(oldest) = self.pending.pop_front() {
                self.complete(oldest)?;
            }
        }
        Ok(())
    }

    /// Decision `id`'s outcome (the first one counts; an unknown id is ignored).
    pub fn outcome(&mut self, id: u64, outcome: &Outcome) -> Result<()> {
        if let Ok(at) = self.pending.binary_search_by_key(&id, |p| p.id) {
            if self.pending[at].outcome.is_none() {
                self.pace(at, outcome.cost_usd);
            }
        }
        self.update(id, |p| {
            if p.outcome.is_none() {
                p.outcome = Some(outcome.clone());
                if p.quality.is_none() {
                    p.quality = credited_quality(outcome.quality, outcome.error);
                }
            }
        })
    }

    /// Decision `id`'s quality from feedback (the first quality counts).
    pub fn quality(&mut self, id: u64, quality: f64) -> Result<()> {
        self.update(id, |p| {
            p.quality.get_or_insert(quality);
        })
    }

    fn update(&mut self, id: u64, change: impl FnOnce(&mut PendingDecision)) -> Result<()> {
        // Decisions arrive in increasing id, so the pending ones are sorted by it.
        let Ok(at) = self.pending.binary_search_by_key(&id, |p| p.id) else {
            return Ok(());
        };
        change(&mut self.pending[at]);
        let p = &self.pending[at];
        if p.outcome.is_some() && p.quality.is_some() {
            if let Some(done) = self.pending.remove(at) {
                self.complete(done)?;
            }
        }
        Ok(())
    }

    /// Steps each candidate's budget, if it has one, with what it would have spent on
    /// pending decision `at`, whose call cost `cost`: DR's estimate of its cost there,
    /// clipped at 0, since it pays for nothing itself.
    fn pace(&mut self, at: usize, cost: f64) {
        let p = &self.pending[at];
        let q = &p.q[COST];
        let mut row = row_of(p.propensity);
        for (c, choice) in self.candidates.iter_mut().zip(&p.candidates) {
            if c.learner.pacer().is_some() {
                set_candidate_row(&mut row, cost, q, p.arm, choice);
                c.learner.pace_calls_elsewhere(1, Dr.terms(&row, 0)[0].max(0.0));
            }
        }
    }

    /// Adds a decision's rows to the estimates, then lets the reward models and the
    /// candidates learn it.
    fn complete(&mut self, p: PendingDecision) -> Result<()> {
        let Some(outcome) = p.outcome else {
            return Ok(());
        };
        let cost = outcome.cost_usd;
        let observed: Observed = [
            p.quality
                .map(|q| self.objective.reward(q, cost, outcome.latency_ms)),
            p.quality,
            Some(cost),
        ];
        let mut row = row_of(p.propensity);
        self.models[p.arm].chosen += 1;
        for (m, r) in observed.iter().enumerate() {
            let Some(r) = *r else { continue };
            let q = &p.q[m];
            // The live policy on its own rows: weight 1 (only its SNIPS, the plain mean, is
            // reported, so its `dm` is never read).
            set_row(&mut row, r, q[p.arm], p.propensity, q[p.arm], true);
            self.incumbent[m].add_rows(&Snips, &row);
            for (i, (c, choice)) in self.candidates.iter_mut().zip(&p.candidates).enumerate() {
                set_candidate_row(&mut row, r, q, p.arm, choice);
                c.metrics[m].add(&row);
                if let (0, Some((index, gate))) = (m, &mut self.canary) {
                    if *index == i {
                        gate.add(&row, !p.canary_served);
                    }
                }
            }
            // A fixed policy on model k puts weight 1 / mu on the rows that chose k and 0
            // on the others, which count in SNIPS' denominator's rows all the same.
            if m > 0 {
                for (k, model) in self.models.iter_mut().enumerate() {
                    let chosen = f64::from(u8::from(k == p.arm));
                    set_row(&mut row, r, q[p.arm], chosen, q[k], true);
                    let moments = if m == 1 {
                        &mut model.quality
                    } else {
                        &mut model.cost
                    };
                    moments.add_rows(&Snips, &row);
                }
            }
            self.reward_models[m].observe(p.arm, &p.request.context.features, r);
        }
        let mut learned = outcome;
        learned.quality = p.quality;
        let arm = &self.arms[p.arm];
        for (c, choice) in self.candidates.iter_mut().zip(&p.candidates) {
            c.learner
                .learn_held(choice.id, arm, &p.request.context, &learned)?;
        }
        Ok(())
    }

    /// The estimates so far.
    pub fn report(&self) -> ShadowReport {
        let models: Vec<ModelReport> = self
            .models
            .iter()
            .zip(&self.arms)
            .map(|(m, id)| ModelReport {
                model: id.clone(),
                rows: m.chosen,
                quality: Interval::of(&m.quality, &Snips),
                cost_usd: Interval::of(&m.cost, &Snips),
            })
            .collect();
        let points: Vec<(f64, f64)> = models
            .iter()
            .filter_map(|m| Some((m.cost_usd.value?, m.quality.value?)))
            .collect();
        let frontier = hull::frontier(&points);
        let hull_at = |cost: Option<f64>| {
            cost.filter(|_| !frontier.is_empty())
                .map(|c| hull::frontier_quality_at(&frontier, c))
        };
        let lift = |quality: Option<f64>, hull: Option<f64>| Some(quality? - hull?);
        let incumbent = {
            let [value, quality, cost_usd] = [0, 1, 2].map(|m| Interval::of(&self.incumbent[m], &Snips));
            let hull_quality_at_cost = hull_at(cost_usd.value);
            IncumbentReport {
                rows: self.incumbent[0].rows(),
                lift_over_hull: lift(quality.value, hull_quality_at_cost),
                hull_quality_at_cost,
                value,
                quality,
                cost_usd,
            }
        };
        let candidates = self
            .candidates
            .iter()
            .map(|c| {
                let [value, quality, cost_usd] = [0, 1, 2].map(|m| MetricReport {
                    rows: c.metrics[m].snips.rows(),
                    snips: Interval::of(&c.metrics[m].snips, &Snips),
                    dr: Interval::of(&c.metrics[m].dr, &Dr),
                });
                let hull_quality_at_cost = hull_at(cost_usd.dr.value);
                CandidateReport {
                    policy: c.policy.clone(),
                    effective_sample_size: c.metrics[0].weights.finish().effective_sample_size,
                    lift_over_hull: lift(quality.dr.value, hull_quality_at_cost),
                    hull_quality_at_cost,
                    value,
                    quality,
                    cost_usd,
                }
            })
            .collect();
        ShadowReport {
            decisions: self.decisions,
            pending: self.pending.len(),
            incumbent,
            candidates,
            models,
            hull: frontier.iter().map(|&(c, q)| [c, q]).collect(),
            canary: self.canary_report(),
        }
    }

    /// The canary's state and estimates, if a candidate serves as one: what [`Shadows::report`]
    /// holds of it, without the rest.
    pub fn canary_report(&self) -> Option<CanaryReport> {
        let (index, gate) = self.canary.as_ref()?;
        Some(gate.report(&self.candidates[*index].policy))
    }

    /// The canary's policy spec, if a candidate serves as one.
    pub fn canary_policy(&self) -> Option<&str> {
        let (index, _) = self.canary.as_ref()?;
        Some(&self.candidates[*index].policy)
    }

    /// The change of stage the canary's gate calls for, if any.
    pub fn canary_verdict(&self) -> Option<Verdict> {
        self.canary.as_ref()?.1.verdict()
    }

    /// Moves the canary to `stage`, its gate's estimates starting afresh.
    pub fn enter_stage(&mut self, stage: Stage) {
        if let Some((_, gate)) = &mut self.canary {
            gate.enter(stage);
        }
    }

    /// Blocks or unblocks the canary's gate.
    pub fn block_canary(&mut self, blocked: bool) {
        if let Some((_, gate)) = &mut self.canary {
            gate.block(blocked);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Context;

    fn request(kind: usize) -> Request {
        Request::new(Context {
            features: vec![1.0, kind as f64],
            input_tokens: 50,
        })
    }

    /// With every quality coming 50 decisions late, a LinUCB candidate on a route that
    /// serves what a live LinUCB learner chooses draws, at every decision, the arm that
    /// learner chooses: it holds what was served as the live learner holds its own
    /// decisions. Without the holds it would repeat its first choice for each kind of
    /// request until the first quality came, where the live learner tries every model.
    #[test]
    fn a_linucb_candidate_holds_what_was_served_as_a_live_linucb_does() {
        const DELAY: usize = 50;
        let arms: Vec<Arm> = ["a", "b", "c", "d"].into_iter().map(Arm::new).collect();
        let mut config = LearnerConfig::new("linucb(alpha=0.1)".parse().unwrap(), 2);
        config.objective = Objective::new(100.0, 0.0).unwrap();
        let mut live = Learner::new(config.clone(), arms.clone()).unwrap();
        let mut shadows = Shadows::new(&[config.policy.clone()], &config, &arms, 1000).unwrap();
        let quality = |kind: usize, arm: usize| [[0.3, 0.6, 0.8, 0.5], [0.7, 0.5, 0.2, 0.4]][kind][arm];
        let mut waiting = VecDeque::new();
        let mut tried_early = std::collections::BTreeSet::new();
        for t in 0..600 {
            let kind = t % 2;
            let d = live.decide(&request(kind)).unwrap();
            let arm = live.arm_index(&d.arm).unwrap();
            let draws = shadows.decide(d.id, &request(kind)).unwrap();
            assert_eq!(draws.candidates[0].arm, arm, "decision {t}");
            if t < DELAY {
                tried_early.insert(arm);
            }
            shadows
                .record(d.id, request(kind), &d.arm, d.propensity, draws)
                .unwrap();
            let outcome = Outcome::new(100.0, 0.001 * (arm + 1) as f64).with_quality(quality(kind, arm));
            waiting.push_back((d.id, outcome));
            if waiting.len() > DELAY {
                let (id, outcome) = waiting.pop_front().unwrap();
                live.record_outcome(id, &outcome).unwrap();
                shadows.outcome(id, &outcome).unwrap();
            }
        }
        assert_eq!(tried_early.len(), arms.len(), "{tried_early:?}");
    }
}
