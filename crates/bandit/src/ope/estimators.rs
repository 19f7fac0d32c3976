//! The estimators, one per type; each states only its per-row terms.

use super::{Estimator, OpeInputs};

/// `m0 / m1`: the self-normalized form shared by replay and SNIPS (NaN without mass).
fn ratio(m: [f64; 3]) -> f64 {
    if m[1] > 0.0 {
        m[0] / m[1]
    } else {
        f64::NAN
    }
}

/// The gradient of [`ratio`].
fn ratio_gradient(m: [f64; 3]) -> [f64; 3] {
    [1.0 / m[1], -m[0] / (m[1] * m[1]), 0.0]
}

/// Replay / rejection sampling (Li, Chu, Langford & Wang 2011): the mean reward of the rows
/// where the candidate's own draw equals the logged arm. Unbiased under uniform logging,
/// where about `n / K` rows are accepted; biased otherwise.
pub struct Replay;

impl Estimator for Replay {
    fn name(&self) -> &'static str {
        "replay"
    }
    fn terms(&self, inputs: &OpeInputs, i: usize) -> [f64; 3] {
        let accepted = if inputs.accepted[i] { 1.0 } else { 0.0 };
        [accepted * inputs.reward[i], accepted, 0.0]
    }
    fn arity(&self) -> usize {
        2
    }
    fn denominator(&self) -> Option<usize> {
        Some(1)
    }
    fn combine(&self, m: [f64; 3]) -> f64 {
        ratio(m)
    }
    fn gradient(&self, m: [f64; 3]) -> [f64; 3] {
        ratio_gradient(m)
    }
    fn unbiased(&self) -> bool {
        false
    }
}

/// Inverse propensity scoring (Horvitz & Thompson 1952): `(1/n) sum w_i r_i`, with `w_i`
/// clipped at `clip` (Strehl et al. 2010). Unbiased without clipping when the logger covers
/// the candidate; its variance grows with the weights.
pub struct Ips;

impl Estimator for Ips {
    fn name(&self) -> &'static str {
        "ips"
    }
    fn terms(&self, inputs: &OpeInputs, i: usize) -> [f64; 3] {
        [inputs.weight(i) * inputs.reward[i], 0.0, 0.0]
    }
    fn unbiased(&self) -> bool {
        true
    }
}

/// Self-normalized IPS (Swaminathan & Joachims 2015): `sum w_i r_i / sum w_i`. Biased
/// (consistent), bounded by the rewards' range, usually much lower variance than IPS.
pub struct Snips;

impl Estimator for Snips {
    fn name(&self) -> &'static str {
        "snips"
    }
    fn terms(&self, inputs: &OpeInputs, i: usize) -> [f64; 3] {
        let w = inputs.weight(i);
        [w * inputs.reward[i], w, 0.0]
    }
    fn arity(&self) -> usize {
        2
    }
    fn denominator(&self) -> Option<usize> {
        Some(1)
    }
    fn combine(&self, m: [f64; 3]) -> f64 {
        ratio(m)
    }
    fn gradient(&self, m: [f64; 3]) -> [f64; 3] {
        ratio_gradient(m)
    }
    fn unbiased(&self) -> bool {
        false
    }
}

/// Direct method (Beygelzimer & Langford 2009): `(1/n) sum_i sum_a pi_i(a) q(x_i, a)`. Low
/// variance; biased as far as the reward model is wrong, an error no interval over the rows
/// measures, so it reports none.
pub struct Dm;

impl Estimator for Dm {
    fn name(&self) -> &'static str {
        "dm"
    }
    fn terms(&self, inputs: &OpeInputs, i: usize) -> [f64; 3] {
        [inputs.dm[i], 0.0, 0.0]
    }
    fn unbiased(&self) -> bool {
        false
    }
    fn has_intervals(&self) -> bool {
        false
    }
}

/// Doubly robust (Dudík, Langford & Li 2011): `(1/n) sum [dm_i + w_i (r_i - q(x_i, a_i))]`.
/// Unbiased when the propensities are right, whatever the reward model; lower variance
/// than IPS when the model is good.
pub struct Dr;

impl Estimator for Dr {
    fn name(&self) -> &'static str {
        "dr"
    }
    fn terms(&self, inputs: &OpeInputs, i: usize) -> [f64; 3] {
        [
            inputs.dm[i] + inputs.weight(i) * (inputs.reward[i] - inputs.q_logged[i]),
            0.0,
            0.0,
        ]
    }
    fn unbiased(&self) -> bool {
        true
    }
}

/// Self-normalized DR (as in Open Bandit Pipeline): `mean(dm) + sum w_i (r_i - q_i) /
/// sum w_i`. Consistent, not unbiased; tames DR's variance under large weights.
pub struct Sndr;

impl Estimator for Sndr {
    fn name(&self) -> &'static str {
        "sndr"
    }
    fn terms(&self, inputs: &OpeInputs, i: usize) -> [f64; 3] {
        let w = inputs.weight(i);
        [inputs.dm[i], w * (inputs.reward[i] - inputs.q_logged[i]), w]
    }
    fn arity(&self) -> usize {
        3
    }
    fn denominator(&self) -> Option<usize> {
        Some(2)
    }
    fn combine(&self, m: [f64; 3]) -> f64 {
        if m[2] > 0.0 {
            m[0] + m[1] / m[2]
        } else {
            f64::NAN
        }
    }
    fn gradient(&self, m: [f64; 3]) -> [f64; 3] {
        [1.0, 1.0 / m[2], -m[1] / (m[2] * m[2])]
    }
    fn unbiased(&self) -> bool {
        false
    }
}

/// Switch-DR (Wang, Agarwal & Dudík 2017, as in Open Bandit Pipeline): DR's correction only
/// where `w_i <= tau`, the model alone elsewhere: `(1/n) sum [dm_i + 1[w_i <= tau] w_i (r_i -
/// q_i)]`. Biased where it switches; bounded variance.
pub struct SwitchDr;

impl Estimator for SwitchDr {
    fn name(&self) -> &'static str {
        "switch-dr"
    }
    fn terms(&self, inputs: &OpeInputs, i: usize) -> [f64; 3] {
        let raw = inputs.target[i] / inputs.propensity[i];
        let correction = if raw <= inputs.switch_tau {
            raw * (inputs.reward[i] - inputs.q_logged[i])
        } else {
            0.0
        };
        [inputs.dm[i] + correction, 0.0, 0.0]
    }
    fn unbiased(&self) -> bool {
        false
    }
}

/// Every estimator, in report order.
pub fn all_estimators() -> Vec<Box<dyn Estimator>> {
    vec![
        Box::new(Replay),
        Box::new(Ips),
        Box::new(Snips),
        Box::new(Dm),
        Box::new(Dr),
        Box::new(Sndr),
        Box::new(SwitchDr),
    ]
}

/// The estimator called `name`.
pub fn estimator_by_name(name: &str) -> Option<Box<dyn Estimator>> {
    all_estimators()
        .into_iter()
        .find(|e| e.name() == name.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::super::{value, OpeInputs, TermMoments};
    use super::*;

    fn inputs() -> OpeInputs {
        OpeInputs {
            reward: vec![1.0, 0.0, 1.0, 0.5],
            propensity: vec![0.5, 0.25, 0.5, 0.2],
            target: vec![1.0, 0.5, 0.0, 0.8],
            q_logged: vec![0.6, 0.2, 0.7, 0.4],
            dm: vec![0.7, 0.3, 0.5, 0.6],
            accepted: vec![true, false, false, true],
            clip: f64::INFINITY,
            switch_tau: 3.0,
        }
    }

    /// Each estimator against its formula, evaluated by hand.
    #[test]
    fn estimators_equal_their_formulas() {
        let x = inputs();
        let w = [2.0, 2.0, 0.0, 4.0];
        let n = 4.0;
        let ips = (2.0 * 1.0 + 2.0 * 0.0 + 0.0 + 4.0 * 0.5) / n;
        let snips = (2.0 + 0.0 + 0.0 + 2.0) / w.iter().sum::<f64>();
        let dm = (0.7 + 0.3 + 0.5 + 0.6) / n;
        let corrections = [2.0 * 0.4, 2.0 * -0.2, 0.0, 4.0 * 0.1];
        let dr = dm + corrections.iter().sum::<f64>() / n;
        let sndr = dm + corrections.iter().sum::<f64>() / w.iter().sum::<f64>();
        // Row 4's weight 4 exceeds tau = 3: its correction is switched off.
        let switch = dm + (corrections[0] + corrections[1]) / n;
        let replay = (1.0 + 0.5) / 2.0;
        for (e, want) in [
            (Box::new(Ips) as Box<dyn Estimator>, ips),
            (Box::new(Snips), snips),
            (Box::new(Dm), dm),
            (Box::new(Dr), dr),
            (Box::new(Sndr), sndr),
            (Box::new(SwitchDr), switch),
            (Box::new(Replay), replay),
        ] {
            let got = value(e.as_ref(), &x);
            assert!((got - want).abs() < 1e-12, "{}: {got} vs {want}", e.name());
        }
    }

    #[test]
    fn clipping_caps_the_weights() {
        let mut x = inputs();
        x.clip = 2.0;
        let ips = (2.0 * 1.0 + 0.0 + 0.0 + 2.0 * 0.5) / 4.0;
        assert!((value(&Ips, &x) - ips).abs() < 1e-12);
    }

    /// SNIPS' delta-method standard error against the linearized influence written out:
    /// terms `(w r, w)`, gradient `(1 / m_w, -m_wr / m_w^2)`, two passes over the rows.
    #[test]
    fn a_ratio_estimators_standard_error_is_its_delta_method() {
        let x = inputs();
        let w = [2.0, 2.0, 0.0, 4.0];
        let wr: Vec<f64> = w.iter().zip(&x.reward).map(|(w, r)| w * r).collect();
        let n = 4.0;
        let (m_wr, m_w) = (wr.iter().sum::<f64>() / n, w.iter().sum::<f64>() / n);
        let g = [1.0 / m_w, -m_wr / (m_w * m_w)];
        let var = (0..4)
            .map(|i| (g[0] * (wr[i] - m_wr) + g[1] * (w[i] - m_w)).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        let se = (var / n).sqrt();
        let mut moments = TermMoments::default();
        moments.add_rows(&Snips, &x);
        let r = moments.report(&Snips, None);
        assert!((r.std_error - se).abs() < 1e-12, "{} vs {se}", r.std_error);
    }

    #[test]
    fn estimators_are_found_by_name() {
        assert_eq!(estimator_by_name("SNDR").unwrap().name(), "sndr");
        assert!(estimator_by_name("magic").is_none());
        assert_eq!(all_estimators().len(), 7);
    }
}
