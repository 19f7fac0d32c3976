//! Spend caps per route, and per caller on a route: USD per UTC day and per UTC month.
//!
//! A route's spend is the cost of the outcomes it recorded (the proxy's calls and
//! `/v1/outcome` reports), counted by the UTC day and month of the record, and the calls
//! the proxy has under way at the most they may cost (the router's `InFlight`); a caller's
//! is that of the outcomes of the decisions it asked for (callers are told apart by a digest
//! of their bearer token, logged with each decision and outcome). Near a cap (from
//! `downgrade_at` of it) decisions keep to the cheaper half of the route's models, by list
//! price; at the cap the route (or the caller) is refused with a 429 naming the cap, until
//! the period ends (`Retry-After`). Refused requests are neither decided nor learned. On
//! start the spend of the current month is read back from the log.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;

/// A route's caps (`[routes.spend_cap]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendCap {
    /// USD per UTC day.
    #[serde(default)]
    pub daily_usd: Option<f64>,
    /// USD per UTC month.
    #[serde(default)]
    pub monthly_usd: Option<f64>,
    /// The share of a cap from which decisions keep to the cheaper models, in (0, 1].
    #[serde(default = "default_downgrade_at")]
    pub downgrade_at: f64,
}

fn default_downgrade_at() -> f64 {
    0.9
}

impl SpendCap {
    /// Checks the values: at least one cap, caps positive and finite, `downgrade_at` in
    /// (0, 1].
    pub fn check(&self) -> Result<(), String> {
        if self.daily_usd.is_none() && self.monthly_usd.is_none() {
            return Err("spend_cap has neither daily_usd nor monthly_usd: it caps nothing".into());
        }
        for (name, cap) in [("daily_usd", self.daily_usd), ("monthly_usd", self.monthly_usd)] {
            if cap.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
                return Err(format!("spend_cap.{name} must be a positive number of USD"));
            }
        }
        if let (Some(daily), Some(monthly)) = (self.daily_usd, self.monthly_usd) {
            if daily > monthly {
                return Err(format!(
                    "spend_cap.daily_usd {daily} is more than monthly_usd {monthly}: it could never bind"
                ));
            }
        }
        if !(self.downgrade_at > 0.0 && self.downgrade_at <= 1.0) {
            return Err(format!(
                "spend_cap.downgrade_at {} is not in (0, 1]",
                self.downgrade_at
            ));
        }
        Ok(())
    }
}

/// Spend of the current UTC day and month, and what the month would have cost on the
/// route's dearest model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    day: String,
    day_usd: f64,
    month: String,
    month_usd: f64,
    month_dearest_usd: f64,
}

/// `YYYY-MM-DD` and `YYYY-MM` of an RFC 3339 UTC timestamp.
fn periods(timestamp: &str) -> (&str, &str) {
    (
        timestamp.get(..10).unwrap_or(""),
        timestamp.get(..7).unwrap_or(""),
    )
}

impl Spend {
    /// Adds `usd` spent at `timestamp` (RFC 3339 UTC), a call the dearest model would have
    /// charged `dearest_usd` for; spend of an earlier period than the one counted is not
    /// counted, a later period starts afresh.
    pub fn add(&mut self, timestamp: &str, usd: f64, dearest_usd: f64) {
        let (day, month) = periods(timestamp);
        self.count(day, usd, month, usd, dearest_usd);
    }

    /// Adds another replica's spend of the same periods; of two periods, the later counts,
    /// as in [`Spend::add`]. The order of additions does not matter.
    pub fn combine(&mut self, other: &Spend) {
        self.count(
            &other.day,
            other.day_usd,
            &other.month,
            other.month_usd,
            other.month_dearest_usd,
        );
    }

    /// Counts spend of `day` and `month`: a later period than the one counted starts
    /// afresh, an earlier one is not counted.
    fn count(&mut self, day: &str, day_usd: f64, month: &str, month_usd: f64, month_dearest_usd: f64) {
        if month > self.month.as_str() {
            self.month = month.to_string();
            self.month_usd = 0.0;
            self.month_dearest_usd = 0.0;
        }
        if month == self.month {
            self.month_usd += month_usd;
            self.month_dearest_usd += month_dearest_usd;
        }
        if day > self.day.as_str() {
            self.day = day.to_string();
            self.day_usd = 0.0;
        }
        if day == self.day {
            self.day_usd += day_usd;
        }
    }

    /// What routing saved this month at `now` (RFC 3339 UTC): the calls' cost on the
    /// dearest model, at list prices, minus what they cost.
    pub fn month_savings(&self, now: &str) -> f64 {
        if periods(now).1 == self.month {
            self.month_dearest_usd - self.month_usd
        } else {
            0.0
        }
    }

    /// The day's and the month's spend at `now` (RFC 3339 UTC): 0 for a period that has
    /// ended since.
    pub fn at(&self, now: &str) -> (f64, f64) {
        let (day, month) = periods(now);
        (
            if day == self.day { self.day_usd } else { 0.0 },
            if month == self.month { self.month_usd } else { 0.0 },
        )
    }
}

/// What a cap allows now.
#[derive(Debug, Clone, PartialEq)]
pub enum Allowance {
    /// Every model.
    Open,
    /// The cheaper models only; why.
    Downgraded(String),
    /// Nothing until the period ends: the message names the cap, with the wait.
    Exhausted(String, Duration),
    /// Nothing while the calls under way reach the cap that what was spent has not: the
    /// message says so; ask again after [`UNDER_WAY_RETRY`].
    HeldByCallsUnderWay(String),
}

/// When to ask again where calls under way reach a cap that what was spent has not: their
/// outcomes may come within seconds, at less than their estimates.
pub const UNDER_WAY_RETRY: Duration = Duration::from_secs(1);

/// An amount in USD: cents from a dollar up, else up to six decimals.
fn usd(x: f64) -> String {
    if x >= 1.0 {
        format!("${x:.2}")
    } else {
        let text = format!("{x:.6}");
        format!("${}", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// What `cap` allows `who` (`route \`r\``, say), who has spent `spend` and has calls
/// under way that may cost up to `under_way_usd`, at `now`. A cap that what was spent reached
/// refuses until its period ends; one that only the calls under way reach, until they end.
pub fn allowance(cap: &SpendCap, who: &str, spend: &Spend, under_way_usd: f64, now: SystemTime) -> Allowance {
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let (day_usd, month_usd) = spend.at(&stamp);
    let periods = [
        ("daily", cap.daily_usd, day_usd, until_next_day(now)),
        (
            "monthly",
            cap.monthly_usd,
            month_usd,
            until_next_month(&stamp, now),
        ),
    ];
    let capped = || {
        periods
            .iter()
            .filter_map(|&(name, cap_usd, spent, wait)| cap_usd.map(|cap_usd| (name, cap_usd, spent, wait)))
    };
    // Of the periods spend reached, the one that ends last: the cap holds until then.
    let reached = capped().filter(|&(_, cap_usd, spent, _)| spent >= cap_usd);
    if let Some((name, cap_usd, spent, wait)) = reached.max_by_key(|&(_, _, _, wait)| wait) {
        return Allowance::Exhausted(
            format!(
                "{who} reached its {name} spend cap of {} ({} spent); \
                 it is served again when the period ends, in {} s (UTC)",
                usd(cap_usd),
                usd(spent),
                wait.as_secs()
            ),
            wait,
        );
    }
    let committed = |spent: f64| spent + under_way_usd;
    if let Some((name, cap_usd, spent, _)) =
        capped().find(|&(_, cap_usd, spent, _)| committed(spent) >= cap_usd)
    {
        return Allowance::HeldByCallsUnderWay(format!(
            "{who} has spent {} of its {name} spend cap of {}, and calls under way may \
             cost up to {} more; it is served again as they end below that",
            usd(spent),
            usd(cap_usd),
            usd(under_way_usd)
        ));
    }
    let near = capped().find(|&(_, cap_usd, spent, _)| committed(spent) >= cap.downgrade_at * cap_usd);
    near.map_or(Allowance::Open, |(name, cap_usd, spent, _)| {
        let share = 100.0 * committed(spent) / cap_usd;
        Allowance::Downgraded(format!(
            "spend cap of {who}: {share:.0}% of the {name} {} spent or under way",
            usd(cap_usd)
        ))
    })
}

/// The refusal of a request that `allowances` (one per cap in force) answer, if any, with
/// how long to wait: of the caps that spend reached, the one that holds longest, since
/// the request is refused until it lifts; else any cap that calls under way hold, asked
/// again after [`UNDER_WAY_RETRY`].
pub fn refusal(allowances: &[Allowance]) -> Option<(String, Duration)> {
    let reached = allowances
        .iter()
        .filter_map(|a| match a {
            Allowance::Exhausted(message, wait) => Some((message.clone(), *wait)),
            _ => None,
        })
        .max_by_key(|&(_, wait)| wait);
    reached.or_else(|| {
        allowances.iter().find_map(|a| match a {
            Allowance::HeldByCallsUnderWay(message) => Some((message.clone(), UNDER_WAY_RETRY)),
            _ => None,
        })
    })
}

/// Why a request that `allowances` let through is downgraded, if a cap is near: the first
/// such cap's reason. A downgraded request calls none of the route's [`dearer_half`].
pub fn downgrade(allowances: &[Allowance]) -> Option<&str> {
    allowances.iter().find_map(|a| match a {
        Allowance::Downgraded(why) => Some(why.as_str()),
        _ => None,
    })
}

fn until_next_day(now: SystemTime) -> Duration {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Duration::from_secs(86_400 - secs % 86_400)
}

fn until_next_month(stamp: &str, now: SystemTime) -> Duration {
    let year: i32 = stamp.get(..4).and_then(|y| y.parse().ok()).unwrap_or(1970);
    let month: u32 = stamp.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(1);
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    humantime::parse_rfc3339(&format!("{year:04}-{month:02}-01T00:00:00Z"))
        .ok()
        .and_then(|start| start.duration_since(now).ok())
        .unwrap_or_default()
}

/// What a call of `input` and `output` tokens that cost `actual_usd` would have cost on the
/// dearest of `models` at list prices; without its tokens (a report that gave none), what
/// it cost: no saving is claimed for it.
pub fn dearest_cost(models: &[ModelConfig], input: u32, output: u32, actual_usd: f64) -> f64 {
    if input == 0 && output == 0 {
        return actual_usd;
    }
    models
        .iter()
        .map(|m| m.arm().cost_usd(f64::from(input), f64::from(output)))
        .fold(0.0, f64::max)
}

/// The models a downgraded route keeps: the cheaper half by list price (input plus output
/// per million tokens; at least one, ties kept).
pub fn dearer_half(models: &[ModelConfig]) -> Vec<&str> {
    let price = |m: &ModelConfig| m.input_usd_per_million + m.output_usd_per_million;
    let mut prices: Vec<f64> = models.iter().map(price).collect();
    prices.sort_by(f64::total_cmp);
    let keep_up_to = prices[(prices.len() - 1) / 2];
    models
        .iter()
        .filter(|m| price(m) > keep_up_to)
        .map(|m| m.id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stamp: &str) -> SystemTime {
        humantime::parse_rfc3339(stamp).unwrap()
    }

    #[test]
    fn replicas_spend_combines_by_period_in_any_order() {
        let spent = |entries: &[(&str, f64)]| {
            let mut s = Spend::default();
            for (stamp, usd) in entries {
                s.add(stamp, *usd, 2.0 * usd);
            }
            s
        };
        let a = spent(&[("2026-11-30T10:00:00Z", 5.0), ("2026-12-01T09:00:00Z", 1.0)]);
        let b = spent(&[("2026-12-01T08:00:00Z", 2.0), ("2026-12-01T10:00:00Z", 0.5)]);
        let c = spent(&[("2026-11-29T08:00:00Z", 7.0)]);
        // What one replica recording every call would hold.
        let whole = spent(&[
            ("2026-11-29T08:00:00Z", 7.0),
            ("2026-11-30T10:00:00Z", 5.0),
            ("2026-12-01T08:00:00Z", 2.0),
            ("2026-12-01T09:00:00Z", 1.0),
            ("2026-12-01T10:00:00Z", 0.5),
        ]);
        for order in [[&a, &b, &c], [&c, &b, &a], [&b, &c, &a]] {
            let mut total = Spend::default();
            order.iter().for_each(|s| total.combine(s));
            assert_eq!(total, whole);
        }
        assert_eq!(whole.at("2026-12-01T12:00:00Z"), (3.5, 3.5));
    }

    #[test]
    fn spend_counts_by_utc_day_and_month() {
        let mut spend = Spend::default();
        spend.add("2026-11-30T23:59:00.000Z", 1.0, 3.0);
        spend.add("2026-12-01T00:01:00.000Z", 2.0, 5.0);
        spend.add("2026-12-01T10:00:00.000Z", 0.5, 1.0);
        // Late: an earlier day is not today's.
        spend.add("2026-11-30T23:59:59.000Z", 4.0, 4.0);
        assert_eq!(spend.at("2026-12-01T12:00:00Z"), (2.5, 2.5));
        assert_eq!(spend.month_savings("2026-12-01T12:00:00Z"), 3.5);
        assert_eq!(spend.month_savings("2027-01-01T00:00:00Z"), 0.0);
        assert_eq!(spend.at("2026-12-02T00:00:00Z"), (0.0, 2.5));
        assert_eq!(spend.at("2027-01-01T00:00:00Z"), (0.0, 0.0));
    }

    /// $10 a day and $100 a month, downgrading from 90%.
    fn ten_a_day_a_hundred_a_month() -> SpendCap {
        SpendCap {
            daily_usd: Some(10.0),
            monthly_usd: Some(100.0),
            downgrade_at: 0.9,
        }
    }

    /// Calls under way count toward a cap at the most they may cost, downgrading and
    /// refusing as spend does; but a refusal that they alone cause is worth asking again
    /// about soon, when they may have ended below that, not at the period's end. A cap
    /// that spend reached keeps its period's wait, whatever is under way.
    #[test]
    fn calls_under_way_refuse_only_until_they_end() {
        let cap = ten_a_day_a_hundred_a_month();
        let now = at("2026-12-15T18:00:00Z");
        let mut spend = Spend::default();
        spend.add("2026-12-15T01:00:00Z", 8.0, 8.0);
        assert_eq!(allowance(&cap, "route `r`", &spend, 0.5, now), Allowance::Open);
        assert!(matches!(
            allowance(&cap, "route `r`", &spend, 1.0, now),
            Allowance::Downgraded(_)
        ));
        let Allowance::HeldByCallsUnderWay(message) = allowance(&cap, "route `r`", &spend, 2.0, now) else {
            panic!()
        };
        assert_eq!(
            message,
            "route `r` has spent $8.00 of its daily spend cap of $10.00, and calls under way may \
             cost up to $2.00 more; it is served again as they end below that"
        );
        let mut month = Spend::default();
        month.add("2026-12-02T00:00:00Z", 100.0, 100.0);
        let Allowance::Exhausted(message, wait) = allowance(&cap, "route `r`", &month, 20.0, now) else {
            panic!()
        };
        assert!(message.contains("reached its monthly spend cap"), "{message}");
        assert_eq!(wait, Duration::from_secs(16 * 86_400 + 6 * 3600));
    }

    /// A request refused by several caps waits for the last of them to lift: the longer
    /// of a cap's two periods, the longest-held of several caps, and a cap that calls
    /// under way hold only where spend reached none.
    #[test]
    fn a_refusal_waits_for_the_last_cap_to_lift() {
        let cap = ten_a_day_a_hundred_a_month();
        let now = at("2026-12-15T18:00:00Z");
        let mut spend = Spend::default();
        spend.add("2026-12-02T00:00:00Z", 95.0, 95.0);
        spend.add("2026-12-15T01:00:00Z", 10.0, 10.0);
        let both = allowance(&cap, "route `r`", &spend, 0.0, now);
        let Allowance::Exhausted(message, wait) = &both else {
            panic!("{both:?}")
        };
        assert!(message.contains("monthly"), "{message}");
        assert_eq!(*wait, Duration::from_secs(16 * 86_400 + 6 * 3600));
        let day = Allowance::Exhausted("day".into(), Duration::from_secs(60));
        let held = Allowance::HeldByCallsUnderWay("held".into());
        assert_eq!(
            refusal(&[held.clone(), day.clone(), both.clone(), Allowance::Open]),
            Some((message.clone(), *wait))
        );
        assert_eq!(
            refusal(&[held.clone(), day]),
            Some(("day".into(), Duration::from_secs(60)))
        );
        assert_eq!(
            refusal(&[Allowance::Open, held]),
            Some(("held".into(), UNDER_WAY_RETRY))
        );
        assert_eq!(refusal(&[Allowance::Downgraded("near".into())]), None);
    }

    #[test]
    fn a_cap_downgrades_then_refuses_until_its_period_ends() {
        let cap = ten_a_day_a_hundred_a_month();
        let now = at("2026-12-31T18:00:00Z");
        let mut spend = Spend::default();
        spend.add("2026-12-31T01:00:00Z", 8.0, 8.0);
        assert_eq!(allowance(&cap, "route `r`", &spend, 0.0, now), Allowance::Open);
        spend.add("2026-12-31T02:00:00Z", 1.0, 1.0);
        let Allowance::Downgraded(why) = allowance(&cap, "route `r`", &spend, 0.0, now) else {
            panic!()
        };
        assert_eq!(
            why,
            "spend cap of route `r`: 90% of the daily $10.00 spent or under way"
        );
        spend.add("2026-12-31T03:00:00Z", 1.0, 1.0);
        let Allowance::Exhausted(message, wait) = allowance(&cap, "route `r`", &spend, 0.0, now) else {
            panic!()
        };
        assert!(
            message.starts_with("route `r` reached its daily spend cap of $10.00 ($10.00 spent)"),
            "{message}"
        );
        assert_eq!(wait, Duration::from_secs(6 * 3600));
        // The month's cap, reached on another day, waits for the first of January.
        let mut month = Spend::default();
        month.add("2026-12-02T00:00:00Z", 100.0, 100.0);
        let Allowance::Exhausted(message, wait) = allowance(&cap, "route `r`", &month, 0.0, now) else {
            panic!()
        };
        assert!(message.contains("monthly spend cap of $100.00"), "{message}");
        assert_eq!(wait, Duration::from_secs(6 * 3600));
        let Allowance::Exhausted(_, wait) =
            allowance(&cap, "route `r`", &month, 0.0, at("2026-12-15T00:00:00Z"))
        else {
            panic!()
        };
        assert_eq!(wait, Duration::from_secs(17 * 86_400));
        assert!(SpendCap {
            daily_usd: Some(-1.0),
            ..cap
        }
        .check()
        .is_err());
        assert!(SpendCap {
            downgrade_at: 0.0,
            ..cap
        }
        .check()
        .is_err());
    }

    #[test]
    fn the_dearer_half_is_left_out() {
        let models: Vec<ModelConfig> = [("a", 0.1), ("b", 5.0), ("c", 1.0), ("d", 1.0)]
            .iter()
            .map(|(id, p)| ModelConfig::priced(id, *p, *p))
            .collect();
        assert_eq!(dearer_half(&models), ["b"]);
        assert!(dearer_half(&models[..1]).is_empty());
        assert_eq!(dearer_half(&models[..2]), ["b"]);
        // 1,000 input and 2,000 output tokens on `b`: 0.005 + 0.010.
        assert!((dearest_cost(&models, 1000, 2000, 0.001) - 0.015).abs() < 1e-15);
        assert_eq!(dearest_cost(&models, 0, 0, 0.25), 0.25);
    }
}
