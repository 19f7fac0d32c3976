//! The replay summary: the JSON document of `--json` (field names are stable) and the
//! terminal table.

use serde::Serialize;

use crate::data::WideDataset;
use crate::metrics::{self, SingleArm};
use crate::replay::{Cascade, CascadeRun, Feedback, ReplaySettings, Run};

/// Dropped rows a summary names; the rest are counted.
const DROPPED_EXAMPLES: usize = 3;

/// Spend over the budget, as a share of it, beyond which the report says a policy did not
/// keep it: more than a paced learner's 2%.
const OVERSPEND_NOTED: f64 = 0.02;

/// `dataset` of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    /// The data path as given.
    pub path: String,
    /// Rows evaluated.
    pub rows: usize,
    /// Arm names.
    pub arms: Vec<String>,
    /// Rows dropped because an arm's value was missing.
    pub dropped_incomplete: usize,
    /// The first of them: file, row and what it missed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped_examples: Vec<String>,
    /// Training rows, when learning on a training set first.
    pub train_rows: Option<usize>,
    /// What built the contexts (see `ContextBuilder::definition`): with prompts, a
    /// route's featurizer definition, which a server with as many caller features shares.
    pub context: String,
}

/// `oracle` of the summary: the per-request best arm (cheapest among the best).
#[derive(Debug, Clone, Serialize)]
pub struct OracleInfo {
    /// Mean quality.
    pub mean_quality: f64,
    /// Mean cost, USD.
    pub mean_cost_usd: f64,
}

/// 95% intervals across seeds; `None` (null) from a single seed.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyCi {
    /// Of mean quality.
    pub mean_quality: Option<[f64; 2]>,
    /// Of mean cost.
    pub mean_cost_usd: Option<[f64; 2]>,
    /// Of mean reward.
    pub mean_reward: Option<[f64; 2]>,
    /// Of regret.
    pub regret: Option<[f64; 2]>,
}

/// `full_information` of a policy: the same policy shown every model's outcome after each
/// decision, on the same features and requests (averaged over the same seeds).
#[derive(Debug, Clone, Serialize)]
pub struct FullInformation {
    /// Mean quality.
    pub mean_quality: f64,
    /// Mean cost per request, USD.
    pub mean_cost_usd: f64,
    /// Mean reward under the variant's objective.
    pub mean_reward: f64,
    /// Its lift over the hull at its own mean cost.
    pub lift_over_hull: f64,
    /// Its mean reward minus the policy's: what learning from the chosen model's outcome
    /// alone costs, in the reward's quality points (the quality's alone where no cost or
    /// latency is weighed, as under a budget without `--w-cost`).
    pub feedback_gap: f64,
    /// Share of its decisions that went to each arm, next to the policy's own
    /// `arm_shares`: which models the information it lacks would have it call.
    pub arm_shares: Vec<f64>,
}

/// One entry of `policies`: a variant averaged over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    /// The variant's label (spec, plus the swept setting).
    pub policy: String,
    /// Seeds run.
    pub seeds: u64,
    /// Mean quality.
    pub mean_quality: f64,
    /// Mean cost per request, USD.
    pub mean_cost_usd: f64,
    /// Mean latency, ms; `None` when the data has none and no latency model stands in.
    pub mean_latency_ms: Option<f64>,
    /// Mean reward under the variant's objective.
    pub mean_reward: f64,
    /// Cumulative regret against the best fixed arm in hindsight.
    pub regret: f64,
    /// Cumulative regret against the per-request oracle.
    pub regret_vs_oracle: f64,
    /// The hull at this policy's mean cost: the best mean quality of a fixed random mix of
    /// at most two single models costing the same, on the evaluated rows.
    pub hull_quality_at_cost: f64,
    /// Mean quality minus `hull_quality_at_cost`: what learning adds over the best fixed
    /// mix. Negative means a fixed mix of two models would have done better.
    pub lift_over_hull: f64,
    /// Under a budget: cumulative quality regret against the hull at the budget (the best
    /// fixed mix that keeps it), `rows * (hull(budget) - mean_quality)`. The best fixed
    /// arm of `regret` may cost far more than the budget allows.
    pub regret_vs_hull_at_budget: Option<f64>,
    /// Under a budget: the hull at the budget, the best quality a fixed mix that keeps it
    /// reaches. A policy spending less than the budget is measured by `lift_over_hull`
    /// against a cheaper mix; this says what spending up to the budget could have bought.
    pub hull_quality_at_budget: Option<f64>,
    /// The full-information reference, when it was run.
    pub full_information: Option<FullInformation>,
    /// Mean quality over the best single model's.
    pub quality_vs_best_single: f64,
    /// Mean cost over the best single model's.
    pub cost_vs_best_single: f64,
    /// Share of requests sent to each arm.
    pub arm_shares: Vec<f64>,
    /// 95% intervals across seeds (Student t).
    pub ci95: PolicyCi,
    /// The variant's cost weight, quality points per USD: the reward's.
    pub w_cost: f64,
    /// The variant's budget, USD per request. Only a policy that weighs costs is paced by
    /// it (not `random` or `fixed`; see `paced`).
    pub budget_usd: Option<f64>,
    /// Whether a budget paced its choices: it had one and weighs costs.
    pub paced: bool,
    /// When paced, the mean cost weight the budget's pacer added to `w_cost` over the
    /// evaluated decisions, quality points per USD: what a dollar was worth to the policy
    /// at the budget.
    pub pacer_cost_weight: Option<f64>,
}

/// `frontier` of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct FrontierInfo {
    /// The single models on the cost-quality frontier, by cost.
    pub arms: Vec<String>,
    /// Their (cost USD, quality).
    pub points: Vec<[f64; 2]>,
    /// Mean frontier quality over the single models' cost range (RouterBench's AIQ).
    pub aiq: f64,
}

/// Two-arm metrics (RouteLLM): one entry per policy.
#[derive(Debug, Clone, Serialize)]
pub struct TwoArmInfo {
    /// The stronger (higher-quality) arm.
    pub strong: String,
    /// The weaker arm.
    pub weak: String,
    /// Per policy (label without the swept setting): APGR and CPT over its settings.
    pub policies: Vec<TwoArmPolicy>,
}

/// APGR and CPT of one policy's settings.
#[derive(Debug, Clone, Serialize)]
pub struct TwoArmPolicy {
    /// The policy spec.
    pub policy: String,
    /// Average performance gap recovered.
    pub apgr: f64,
    /// Share of strong calls needed for 50% of the gap.
    pub cpt50: f64,
    /// Share of strong calls needed for 80% of the gap.
    pub cpt80: f64,
}

/// The `--json` document.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// What was replayed.
    pub dataset: DatasetInfo,
    /// Every arm alone.
    pub single_arms: Vec<SingleArm>,
    /// The arm with the highest mean quality.
    pub best_single: String,
    /// The per-request oracle.
    pub oracle: OracleInfo,
    /// The single models' cost-quality frontier.
    pub frontier: FrontierInfo,
    /// RouteLLM's metrics, for two-arm data.
    pub two_arm: Option<TwoArmInfo>,
    /// One entry per variant.
    pub policies: Vec<PolicySummary>,
    /// One entry per cascade replayed ([`summarize_cascades`]).
    pub cascades: Vec<CascadeSummary>,
}

/// One entry of `cascades`: a cascade averaged over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct CascadeSummary {
    /// Its label: the models and the check's settings.
    pub cascade: String,
    /// The model called first.
    pub first: String,
    /// The model escalated to.
    pub then: String,
    /// The first answer's quality at which the check passes it.
    pub pass: f64,
    /// The probability that the check misjudges.
    pub check_error: f64,
    /// Seeds run.
    pub seeds: u64,
    /// Mean quality of the answers given.
    pub mean_quality: f64,
    /// Mean cost of both calls per request, USD.
    pub mean_cost_usd: f64,
    /// Mean latency of both calls, ms; `None` when the data has none and no latency model
    /// stands in.
    pub mean_latency_ms: Option<f64>,
    /// Share of requests escalated.
    pub escalated: f64,
    /// The hull at the cascade's mean cost.
    pub hull_quality_at_cost: f64,
    /// Mean quality minus `hull_quality_at_cost`.
    pub lift_over_hull: f64,
    /// 95% interval of the mean quality across seeds (Student t); `None` from one seed.
    pub ci95_quality: Option<[f64; 2]>,
}

/// The summaries of `runs` of `cascades` on `data` (whose hull `summary` holds).
pub fn summarize_cascades(
    summary: &Summary,
    cascades: &[Cascade],
    runs: &[CascadeRun],
    latency_known: bool,
) -> Vec<CascadeSummary> {
    let hull: Vec<(f64, f64)> = summary.frontier.points.iter().map(|p| (p[0], p[1])).collect();
    cascades
        .iter()
        .enumerate()
        .map(|(i, cascade)| {
            let mine: Vec<&CascadeRun> = runs.iter().filter(|r| r.cascade == i).collect();
            let of = |f: fn(&CascadeRun) -> f64| -> Vec<f64> { mine.iter().map(|r| f(r)).collect() };
            let (q, ci95_quality) = metrics::mean_ci95(&of(|r| r.mean_quality));
            let c = metrics::mean_ci95(&of(|r| r.mean_cost_usd)).0;
            let hull_at = metrics::frontier_quality_at(&hull, c);
            CascadeSummary {
                cascade: cascade.label(),
                first: cascade.first.clone(),
                then: cascade.then.clone(),
                pass: cascade.pass,
                check_error: cascade.check_error,
                seeds: mine.len() as u64,
                mean_quality: q,
                mean_cost_usd: c,
                mean_latency_ms: latency_known.then(|| metrics::mean_ci95(&of(|r| r.mean_latency_ms)).0),
                escalated: metrics::mean_ci95(&of(|r| r.escalated)).0,
                hull_quality_at_cost: hull_at,
                lift_over_hull: q - hull_at,
                ci95_quality,
            }
        })
        .collect()
}

/// Builds the summary of `runs` on `data`, whose contexts `context` defined.
pub fn summarize(
    data: &WideDataset,
    context: &str,
    train_rows: Option<usize>,
    settings: &ReplaySettings,
    runs: &[Run],
    latency_mean_ms: Option<&[f64]>,
) -> Summary {
    // Under a drift the single models, the hull and the oracle are what the shuffled
    // evaluation faced on average; the oracle's per-request maximum is taken on each side
    // of the step.
    let drift = settings.knobs.drift.as_ref();
    let expected = drift.map(|d| d.expected(data));
    let singles = metrics::single_arms(expected.as_ref().unwrap_or(data), latency_mean_ms);
    let best = metrics::best_single(&singles);
    let (oracle_quality, oracle_cost) = match drift {
        None => metrics::oracle(data),
        Some(d) => {
            let f = d.share_after(data.rows());
            let (before, after) = (metrics::oracle(data), metrics::oracle(&d.shifted(data)));
            (
                (1.0 - f) * before.0 + f * after.0,
                (1.0 - f) * before.1 + f * after.1,
            )
        }
    };
    let points: Vec<(f64, f64)> = singles
        .iter()
        .map(|s| (s.mean_cost_usd, s.mean_quality))
        .collect();
    let hull = metrics::frontier(&points);
    let lo = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let frontier = FrontierInfo {
        arms: hull
            .iter()
            .filter_map(|p| points.iter().position(|q| q == p).map(|i| singles[i].arm.clone()))
            .collect(),
        points: hull.iter().map(|p| [p.0, p.1]).collect(),
        aiq: metrics::aiq(&hull, lo, hi),
    };
    let hull_at = |cost: f64| metrics::frontier_quality_at(&hull, cost);
    let latency_known = data.latency_ms.is_some() || latency_mean_ms.is_some();
    let best_quality = singles[best].mean_quality;
    let best_cost = singles[best].mean_cost_usd;
    let policies: Vec<PolicySummary> = settings
        .variants
        .iter()
        .enumerate()
        .map(|(v, variant)| {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|r| r.variant == v && r.feedback == Feedback::Bandit)
                .collect();
            let full: Vec<&Run> = runs
                .iter()
                .filter(|r| r.variant == v && r.feedback == Feedback::Full)
                .collect();
            let of = |runs: &[&Run], f: fn(&Run) -> f64| -> Vec<f64> { runs.iter().map(|r| f(r)).collect() };
            let (q, q_ci) = metrics::mean_ci95(&of(&mine, |r| r.mean_quality));
            let (c, c_ci) = metrics::mean_ci95(&of(&mine, |r| r.mean_cost_usd));
            let (rw, rw_ci) = metrics::mean_ci95(&of(&mine, |r| r.mean_reward));
            let (rg, rg_ci) = metrics::mean_ci95(&of(&mine, |r| r.regret));
            let hull_at_budget = variant.budget_usd.map(hull_at);
            let paced = variant.budget_usd.is_some() && variant.spec.kind.weighs_costs();
            let mean_w_cost = metrics::mean_ci95(&of(&mine, |r| r.mean_w_cost)).0;
            PolicySummary {
                policy: variant.label.clone(),
                seeds: mine.len() as u64,
                mean_quality: q,
                mean_cost_usd: c,
                mean_latency_ms: latency_known
                    .then(|| metrics::mean_ci95(&of(&mine, |r| r.mean_latency_ms)).0),
                mean_reward: rw,
                regret: rg,
                regret_vs_oracle: metrics::mean_ci95(&of(&mine, |r| r.regret_vs_oracle)).0,
                hull_quality_at_cost: hull_at(c),
                lift_over_hull: q - hull_at(c),
                regret_vs_hull_at_budget: hull_at_budget.map(|hull| data.rows() as f64 * (hull - q)),
                hull_quality_at_budget: hull_at_budget,
                full_information: (!full.is_empty()).then(|| {
                    let mean = |f: fn(&Run) -> f64| metrics::mean_ci95(&of(&full, f)).0;
                    let (fq, fc, fr) = (
                        mean(|r| r.mean_quality),
                        mean(|r| r.mean_cost_usd),
                        mean(|r| r.mean_reward),
                    );
                    FullInformation {
                        mean_quality: fq,
                        mean_cost_usd: fc,
                        mean_reward: fr,
                        lift_over_hull: fq - hull_at(fc),
                        feedback_gap: fr - rw,
                        arm_shares: arm_shares(&full, data.num_arms()),
                    }
                }),
                quality_vs_best_single: q / best_quality,
                cost_vs_best_single: if best_cost > 0.0 { c / best_cost } else { f64::NAN },
                arm_shares: arm_shares(&mine, data.num_arms()),
                ci95: PolicyCi {
                    mean_quality: q_ci,
                    mean_cost_usd: c_ci,
                    mean_reward: rw_ci,
                    regret: rg_ci,
                },
                w_cost: variant.objective.w_cost,
                budget_usd: variant.budget_usd,
                paced,
                pacer_cost_weight: paced.then_some(mean_w_cost - variant.objective.w_cost),
            }
        })
        .collect();
    let two_arm = (data.num_arms() == 2).then(|| {
        let weak = 1 - best;
        let mut specs: Vec<String> = settings.variants.iter().map(|v| v.spec.to_string()).collect();
        specs.dedup();
        TwoArmInfo {
            strong: singles[best].arm.clone(),
            weak: singles[weak].arm.clone(),
            policies: specs
                .iter()
                .map(|spec| {
                    let points: Vec<(f64, f64)> = settings
                        .variants
                        .iter()
                        .zip(&policies)
                        .filter(|(v, _)| &v.spec.to_string() == spec)
                        .map(|(_, p)| (p.arm_shares[best], p.mean_quality))
                        .collect();
                    let curve = metrics::pgr_curve(&points, singles[weak].mean_quality, best_quality);
                    TwoArmPolicy {
                        policy: spec.clone(),
                        apgr: metrics::apgr(&curve),
                        cpt50: metrics::cpt(&curve, 0.5),
                        cpt80: metrics::cpt(&curve, 0.8),
                    }
                })
                .collect(),
        }
    });
    Summary {
        dataset: DatasetInfo {
            path: data.source.clone(),
            rows: data.rows(),
            arms: data.arms.clone(),
            dropped_incomplete: data.dropped.len(),
            dropped_examples: data.dropped.iter().take(DROPPED_EXAMPLES).cloned().collect(),
            train_rows,
            context: context.to_string(),
        },
        best_single: singles[best].arm.clone(),
        single_arms: singles,
        oracle: OracleInfo {
            mean_quality: oracle_quality,
            mean_cost_usd: oracle_cost,
        },
        frontier,
        two_arm,
        policies,
        cascades: Vec::new(),
    }
}

/// Share of the runs' decisions that went to each of `arms` arms.
fn arm_shares(runs: &[&Run], arms: usize) -> Vec<f64> {
    let total: usize = runs.iter().map(|r| r.arm_counts.iter().sum::<usize>()).sum();
    (0..arms)
        .map(|a| runs.iter().map(|r| r.arm_counts[a]).sum::<usize>() as f64 / total.max(1) as f64)
        .collect()
}

/// A latency for the table: "n/a" when unknown.
fn latency(ms: Option<f64>) -> String {
    ms.map_or("n/a".into(), |ms| format!("{ms:.1}"))
}

/// USD for the table: six decimals, or three significant digits where six decimals would
/// print a non-zero amount as zero (a table of very cheap calls).
pub fn usd(x: f64) -> String {
    if x != 0.0 && x.abs() < 5e-7 {
        format!("{x:.2e}")
    } else {
        format!("{x:.6}")
    }
}

/// A ratio to the best single model as a percentage; n/a where the best has none to
/// compare with (a table without costs).
fn share(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{:.1}%", 100.0 * ratio)
    } else {
        "n/a".into()
    }
}

/// The summary as a terminal table.
pub fn table(summary: &Summary) -> String {
    let mut out = String::new();
    let d = &summary.dataset;
    out.push_str(&format!(
        "dataset {}: {} rows, {} arms{}{}\n\n",
        d.path,
        d.rows,
        d.arms.len(),
        d.train_rows
            .map(|t| format!(", trained on {t} rows"))
            .unwrap_or_default(),
        if d.dropped_incomplete > 0 {
            let more = d.dropped_incomplete - d.dropped_examples.len();
            format!(
                " ({} incomplete rows dropped: {}{})",
                d.dropped_incomplete,
                d.dropped_examples.join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            )
        } else {
            String::new()
        }
    ));
    let width = summary
        .policies
        .iter()
        .map(|p| p.policy.len())
        .chain(summary.cascades.iter().map(|c| c.cascade.len()))
        .chain(summary.single_arms.iter().map(|a| a.arm.len() + 7))
        .max()
        .unwrap_or(10)
        .max(12);
    out.push_str(&format!(
        "{:<width$} {:>8} {:>11} {:>10} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>10} {:>9}\n",
        "policy",
        "quality",
        "cost_usd",
        "latency_ms",
        "reward",
        "regret",
        "q/best",
        "c/best",
        "hull",
        "lift",
        "full_gap",
        "w_cost",
        "budget_usd",
        "pacer_w"
    ));
    for p in &summary.policies {
        out.push_str(&format!(
            "{:<width$} {:>8.4} {:>11} {:>10} {:>8.4} {:>9.1} {:>9} {:>8} {:>8.4} {:>+8.4} {:>9} {:>8} {:>10} {:>9}\n",
            p.policy,
            p.mean_quality,
            usd(p.mean_cost_usd),
            latency(p.mean_latency_ms),
            p.mean_reward,
            p.regret,
            share(p.quality_vs_best_single),
            share(p.cost_vs_best_single),
            p.hull_quality_at_cost,
            p.lift_over_hull,
            p.full_information
                .as_ref()
                .map_or("n/a".into(), |f| format!("{:+.4}", f.feedback_gap)),
            p.w_cost,
            match p.budget_usd {
                None => "none".into(),
                Some(b) if p.paced => usd(b),
                Some(_) => "unpaced".into(),
            },
            p.pacer_cost_weight.map_or("-".into(), |w| format!("{w:+.0}"))
        ));
    }
    for c in &summary.cascades {
        out.push_str(&format!(
            "{:<width$} {:>8.4} {:>11} {:>10} {:>8} {:>9} {:>9} {:>8} {:>8.4} {:>+8.4}   escalated {:.1}%\n",
            c.cascade,
            c.mean_quality,
            usd(c.mean_cost_usd),
            latency(c.mean_latency_ms),
            "",
            "",
            "",
            "",
            c.hull_quality_at_cost,
            c.lift_over_hull,
            100.0 * c.escalated
        ));
    }
    out.push('\n');
    let best = summary.single_arms.iter().find(|a| a.arm == summary.best_single);
    for a in &summary.single_arms {
        let (q, c) = best.map_or((f64::NAN, f64::NAN), |b| {
            (a.mean_quality / b.mean_quality, a.mean_cost_usd / b.mean_cost_usd)
        });
        out.push_str(&format!(
            "{:<width$} {:>8.4} {:>11} {:>10} {:>8} {:>9} {:>9} {:>8}\n",
            format!("single:{}", a.arm),
            a.mean_quality,
            usd(a.mean_cost_usd),
            latency(a.mean_latency_ms),
            "",
            "",
            share(q),
            share(c)
        ));
    }
    out.push_str(&format!(
        "{:<width$} {:>8.4} {:>11}\n",
        "oracle",
        summary.oracle.mean_quality,
        usd(summary.oracle.mean_cost_usd)
    ));
    out.push_str(&format!(
        "\nbest single model: {}; frontier: {} (AIQ {:.4})\n",
        summary.best_single,
        summary.frontier.arms.join(" -> "),
        summary.frontier.aiq
    ));
    out.push_str(
        "hull: the best fixed mix of at most two single models at the policy's mean cost; \
         lift: quality minus hull\n",
    );
    let (arms, points) = (&summary.frontier.arms, &summary.frontier.points);
    if let (Some(cheapest), Some(&[cheapest_cost, _]), Some(best), Some(&[best_cost, _])) =
        (arms.first(), points.first(), arms.last(), points.last())
    {
        let mut budgets: Vec<f64> = summary.policies.iter().filter_map(|p| p.budget_usd).collect();
        budgets.sort_by(f64::total_cmp);
        budgets.dedup();
        for budget in budgets {
            if budget < cheapest_cost {
                out.push_str(&format!(
                    "the budget {} is below every model's mean cost ({cheapest}, the \
                     cheapest, costs {}): no policy can keep it, and the hull at \
                     the budget is {cheapest}'s quality\n",
                    usd(budget),
                    usd(cheapest_cost)
                ));
            } else if budget > best_cost {
                out.push_str(&format!(
                    "the budget {} is above the best model's mean cost ({best} costs \
                     {}): it keeps no policy from the best model (a share of the \
                     best model's cost is written with %, as 25%)\n",
                    usd(budget),
                    usd(best_cost)
                ));
            }
        }
    }
    if summary.policies.iter().any(|p| p.full_information.is_some()) {
        out.push_str(
            "full_gap: the reward the same policy gains when shown every model's outcome \
             after each decision (full information, same features and requests)\n",
        );
    }
    for p in summary
        .policies
        .iter()
        .filter(|p| p.regret_vs_hull_at_budget.is_some())
    {
        out.push_str(&format!(
            "{}: regret vs the hull at the budget {:.1}",
            p.policy,
            p.regret_vs_hull_at_budget.unwrap_or(f64::NAN)
        ));
        // A policy that overspends can beat a mix held to the budget by spending more.
        let spent = p.budget_usd.map_or(0.0, |b| p.mean_cost_usd / b);
        if spent > 1.0 + OVERSPEND_NOTED {
            out.push_str(&format!(
                " (it spent {:.0}% of the budget: its lift, against the hull at its own \
                 cost, is the comparison that holds)",
                100.0 * spent
            ));
        }
        out.push('\n');
    }
    if let Some(two) = &summary.two_arm {
        for p in &two.policies {
            out.push_str(&format!(
                "{}: APGR {:.3}, CPT(50%) {:.1}%, CPT(80%) {:.1}% ({} vs {})\n",
                p.policy,
                p.apgr,
                100.0 * p.cpt50,
                100.0 * p.cpt80,
                two.strong,
                two.weak
            ));
        }
    }
    out
}
