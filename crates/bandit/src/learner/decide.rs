//! The decision pipeline: eligibility, estimates, costs and penalties, pruning, the
//! budget's band, the policy's choice, and the explanation a caller gets.

use rand::{Rng, SeedableRng};

use crate::error::{ErrorKind, Result};
use crate::limits;
use crate::outcome::{BudgetPacer, Objective};
use crate::pmf;
use crate::policy::{Choice, ChoiceInput, DecisionRng, Estimate, Policy, PropensityKind};

use super::{ArmChoice, ArmEstimate, Decision, Learner, PmfChoice, Request, TrackedDecision};

/// A decision's arithmetic, shared by [`Learner::propose`] and [`Learner::decide_arm`]:
/// vectors run over the eligible arms, `position` indexes them.
struct Selection {
    id: u64,
    /// The arms the request admitted, when some were not (see [`Decision::admitted`]).
    admitted: Vec<usize>,
    eligible: Vec<usize>,
    excluded: Vec<String>,
    costs: Vec<f64>,
    estimates: Vec<Estimate>,
    latencies: Vec<(f64, f64)>,
    penalties: Vec<f64>,
    probabilities: Vec<f64>,
    propensity_kind: PropensityKind,
    position: usize,
    w_cost: f64,
}

/// For each arm (by position), an arm that dominates it with confidence `z`, if any: one
/// that costs no more, is no slower, and whose quality's lower bound `mean - z std`
/// exceeds this arm's upper bound `mean + z std`, so that it wins at every cost and
/// latency weight (those of a budget's band included). Domination is a strict order, so
/// the arms it leaves always include a best one.
fn dominated(estimates: &[Estimate], costs: &[f64], latencies: &[(f64, f64)], z: f64) -> Vec<Option<usize>> {
    (0..estimates.len())
        .map(|p| {
            let upper = estimates[p].mean + z * estimates[p].std;
            (0..estimates.len()).find(|&q| {
                q != p
                    && costs[q] <= costs[p]
                    && latencies[q].0 <= latencies[p].0
                    && estimates[q].mean - z * estimates[q].std > upper
            })
        })
        .collect()
}

/// Keeps the elements of `values` whose position is marked in `keep`.
fn retain_positions<T>(values: &mut Vec<T>, keep: &[bool]) {
    let mut position = 0;
    values.retain(|_| {
        position += 1;
        keep[position - 1]
    });
}

impl Learner {
    /// Everything a decision computes, before it is explained; `unpaced` is the objective
    /// [`Learner::check_request`] found the request sound with.
    fn select(&self, request: &Request, unpaced: Objective) -> Result<Selection> {
        let x = &request.context.features;
        let pacer = self.pacer.as_ref().map(|p| p.ahead(&request.costs_under_way));
        let w_cost = unpaced.w_cost + pacer.as_ref().map_or(0.0, BudgetPacer::extra_cost_weight);
        let objective = Objective { w_cost, ..unpaced };

        let tokens = request.context.input_tokens;
        let answer_tokens = self.route_answer_tokens();
        let mut eligible = Vec::with_capacity(self.arms.len());
        let mut excluded = Vec::new();
        let mut costs = Vec::with_capacity(self.arms.len());
        for (i, arm) in self.arms.iter().enumerate() {
            let cost = self.expected_cost_usd(i, x, tokens, answer_tokens);
            match request.constraints.exclusion(arm, tokens, cost) {
                Some(reason) => excluded.push(reason),
                None => {
                    eligible.push(i);
                    costs.push(cost);
                }
            }
        }
        if eligible.is_empty() {
            return Err(ErrorKind::NoEligibleArm { reasons: excluded }.into());
        }
        let admitted = if eligible.len() < self.arms.len() {
            eligible.clone()
        } else {
            Vec::new()
        };
        if !request.unavailable.is_empty() {
            let available: Vec<bool> = eligible
                .iter()
                .map(|&a| !request.unavailable.contains_key(&self.arms[a].id))
                .collect();
            if available.contains(&true) {
                for (&a, _) in eligible.iter().zip(&available).filter(|(_, up)| !**up) {
                    let id = &self.arms[a].id;
                    excluded.push(format!("{id}: unavailable ({})", request.unavailable[id]));
                }
                retain_positions(&mut costs, &available);
                retain_positions(&mut eligible, &available);
            }
        }
        let mut estimates: Vec<Estimate> = eligible.iter().map(|&a| self.policy.estimate(a, x)).collect();
        let mut latencies: Vec<(f64, f64)> = eligible
            .iter()
            .map(|&a| self.usage[a].latency_estimate_ms())
            .collect();
        let mut penalties: Vec<f64> = costs
            .iter()
            .zip(&latencies)
            .map(|(&c, &(l, _))| objective.penalty(c, l))
            .collect();
        let z = self.config.policy.prune;
        if z > 0.0 {
            let dominated = dominated(&estimates, &costs, &latencies, z);
            for (p, by) in dominated.iter().enumerate() {
                if let Some(q) = by {
                    excluded.push(format!(
                        "{}: dominated by {} (costs no more, better with confidence)",
                        self.arms[eligible[p]].id, self.arms[eligible[*q]].id
                    ));
                }
            }
            let keep: Vec<bool> = dominated.iter().map(Option::is_none).collect();
            retain_positions(&mut eligible, &keep);
            retain_positions(&mut costs, &keep);
            retain_positions(&mut estimates, &keep);
            retain_positions(&mut latencies, &keep);
            retain_positions(&mut penalties, &keep);
        }

        let id = self.next_decision;
        let mut rng = DecisionRng::seed_from_u64(self.config.seed);
        rng.set_stream(id);
        let input = ChoiceInput {
            features: x,
            eligible: &eligible,
            estimates: &estimates,
            penalties: &penalties,
        };
        let band = pacer
            .as_ref()
            .map(BudgetPacer::extra_cost_weights)
            .unwrap_or_default();
        let choice = if band.is_empty() {
            self.policy.choose(&input, &mut rng)?
        } else {
            self.choose_in_band(&input, &band, unpaced, &costs, &latencies, &mut rng)?
        };

        // The exploration floor wraps every policy: with probability k * floor a uniform
        // eligible arm, otherwise the policy's own choice.
        let k = eligible.len();
        let floor = pmf::effective_floor(k, self.config.policy.floor);
        let position = if floor > 0.0 && rng.random::<f64>() < k as f64 * floor {
            rng.random_range(0..k)
        } else {
            choice.position
        };
        Ok(Selection {
            id,
            probabilities: pmf::with_floor(choice.pmf, floor),
            propensity_kind: choice.propensity,
            position,
            admitted,
            eligible,
            excluded,
            costs,
            estimates,
            latencies,
            penalties,
            w_cost,
        })
    }

    /// The choice under a binding budget (see [`BudgetPacer`]): the policy chooses at each
    /// extra cost weight of the pacer's band, added to the `unpaced` objective; the
    /// decision takes one of these choices at random, so its PMF is their mean.
    fn choose_in_band(
        &self,
        input: &ChoiceInput<'_>,
        band: &[f64],
        unpaced: Objective,
        costs: &[f64],
        latencies: &[(f64, f64)],
        rng: &mut DecisionRng,
    ) -> Result<Choice> {
        let mut choices = Vec::with_capacity(band.len());
        for &extra in band {
            let at = Objective {
                w_cost: unpaced.w_cost + extra,
                ..unpaced
            };
            let penalties: Vec<f64> = costs
                .iter()
                .zip(latencies)
                .map(|(&c, &(l, _))| at.penalty(c, l))
                .collect();
            choices.push(self.policy.choose(
                &ChoiceInput {
                    penalties: &penalties,
                    ..*input
                },
                rng,
            )?);
        }
        let share = 1.0 / band.len() as f64;
        let mut pmf = vec![0.0; input.len()];
        for choice in &choices {
            pmf.iter_mut().zip(&choice.pmf).for_each(|(p, q)| *p += share * q);
        }
        let propensity = choices
            .iter()
            .fold(PropensityKind::Exact, |kind, c| match (kind, c.propensity) {
                (PropensityKind::Exact, PropensityKind::Exact) => PropensityKind::Exact,
                (PropensityKind::Estimated { draws }, PropensityKind::Estimated { draws: more }) => {
                    PropensityKind::Estimated { draws: draws + more }
                }
                (PropensityKind::Estimated { draws }, PropensityKind::Exact)
                | (PropensityKind::Exact, PropensityKind::Estimated { draws }) => {
                    PropensityKind::Estimated { draws }
                }
            });
        let position = choices[rng.random_range(0..choices.len())].position;
        Ok(Choice {
            position,
            pmf,
            propensity,
        })
    }

    /// What [`Learner::decide`] would decide for `request` next, without remembering it:
    /// the same arm, propensity and explanation, and no change of state. Off-policy
    /// evaluation reads a candidate's PMF this way.
    pub fn propose(&self, request: &Request) -> Result<Decision> {
        let unpaced = self.check_request(request)?;
        Ok(self.explain(self.select(request, unpaced)?))
    }

    /// The decision a selection makes, with its explanation.
    fn explain(&self, s: Selection) -> Decision {
        let k = s.eligible.len();
        let rewards: Vec<f64> = s
            .estimates
            .iter()
            .zip(&s.penalties)
            .map(|(e, p)| e.mean - p)
            .collect();
        let mut order: Vec<usize> = (0..k).filter(|&p| p != s.position).collect();
        order.sort_by(|&a, &b| rewards[b].total_cmp(&rewards[a]).then(a.cmp(&b)));
        let arms = (0..k)
            .map(|p| ArmEstimate {
                arm: self.arms[s.eligible[p]].id.clone(),
                quality: s.estimates[p].mean,
                quality_std: s.estimates[p].std,
                cost_usd: s.costs[p],
                latency_ms: s.latencies[p].0,
                latency_std_ms: s.latencies[p].1,
                reward: rewards[p],
                probability: s.probabilities[p],
            })
            .collect();
        Decision {
            id: s.id,
            arm: self.arms[s.eligible[s.position]].id.clone(),
            propensity: s.probabilities[s.position],
            propensity_kind: s.propensity_kind,
            fallback: order
                .iter()
                .map(|&p| self.arms[s.eligible[p]].id.clone())
                .collect(),
            arms,
            excluded: s.excluded,
            admitted: s.admitted.iter().map(|&a| self.arms[a].id.clone()).collect(),
            w_cost: s.w_cost,
        }
    }

    /// A request's features, constraints and objective checked; its objective (the
    /// learner's unless it brings one), before pacing.
    fn check_request(&self, request: &Request) -> Result<Objective> {
        self.validate_features(&request.context.features)?;
        request.constraints.validate()?;
        limits::COST_USD.check_all("costs_under_way", &request.costs_under_way)?;
        match request.objective {
            Some(o) => Objective::new(o.w_cost, o.w_latency),
            None => Ok(self.config.objective),
        }
    }

    /// Checks `request`, then holds the latest decision ([`Learner::hold_latest`]), so
    /// that a refused request changes nothing; returns the request's objective.
    fn check_and_hold_latest(&mut self, request: &Request) -> Result<Objective> {
        let unpaced = self.check_request(request)?;
        self.hold_latest();
        Ok(unpaced)
    }

    /// Chooses an arm for `request` and remembers the decision for its outcome.
    pub fn decide(&mut self, request: &Request) -> Result<Decision> {
        let unpaced = self.check_and_hold_latest(request)?;
        let s = self.select(request, unpaced)?;
        let (id, arm) = (s.id, s.eligible[s.position]);
        let decision = self.explain(s);
        self.track(id, arm, &request.context);
        Ok(decision)
    }

    /// [`Learner::decide`] without the explanation, for off-policy evaluation: the same
    /// choice, returned as the decision's probability of every arm. The decision is a
    /// counterfactual one, tracked but not held: its caller learns what was served instead,
    /// holding it meanwhile if its quality comes late ([`Learner::hold_untracked`], then
    /// [`Learner::learn_held`]), as a learner that served it would.
    pub fn decide_pmf(&mut self, request: &Request) -> Result<PmfChoice> {
        let unpaced = self.check_and_hold_latest(request)?;
        let s = self.select(request, unpaced)?;
        let mut pmf = vec![0.0; self.arms.len()];
        for (&arm, &p) in s.eligible.iter().zip(&s.probabilities) {
            pmf[arm] = p;
        }
        let arm = s.eligible[s.position];
        let expected_cost_usd = s.probabilities.iter().zip(&s.costs).map(|(p, c)| p * c).sum();
        self.track_decision(s.id, TrackedDecision::new(arm, &request.context));
        Ok(PmfChoice {
            id: s.id,
            pmf,
            arm,
            expected_cost_usd,
        })
    }

    /// [`Learner::decide`] without the explanation, for simulators that play many
    /// decisions: the same choice and state change, returned as the arm's index.
    pub fn decide_arm(&mut self, request: &Request) -> Result<ArmChoice> {
        let choice = self.decide_untracked(request)?;
        self.track(choice.id, choice.arm, &request.context);
        Ok(choice)
    }

    /// [`Learner::decide_arm`] for a caller that keeps its own pending decisions (a
    /// simulator replaying a table knows each decision's arm and context): the same
    /// choice, without remembering the decision. Its feedback goes, with its id, arm and
    /// context, to [`Learner::record_untracked_outcome`] and
    /// [`Learner::record_untracked_quality`]; a caller whose qualities come after later
    /// decisions holds it meanwhile ([`Learner::hold_untracked`]), as `decide_arm` does.
    pub fn decide_untracked(&mut self, request: &Request) -> Result<ArmChoice> {
        let unpaced = self.check_and_hold_latest(request)?;
        let s = self.select(request, unpaced)?;
        self.next_decision = s.id + 1;
        Ok(ArmChoice {
            id: s.id,
            arm: s.eligible[s.position],
            propensity: s.probabilities[s.position],
            w_cost: s.w_cost,
        })
    }
}
