//! Logged (bandit-feedback) datasets: one row per decision.
//!
//! Columns, exactly as the server writes them ([`quiver_log::COLUMNS`]): `decision_id`,
//! `timestamp`, `route`, `policy`, `arm`, `propensity` in (0, 1], `quality` in [0, 1] or
//! null, `cost_usd`, `latency_ms`, `error`, and `prompt` and/or numeric `f_*` columns.
//! Only `arm` and `propensity` are required of data from elsewhere; the others default to
//! row numbers, empty text, null quality, 0 and false. Where a `cost_usd` column is
//! present, a row with neither a cost nor a latency, and no failure, is a call whose
//! outcome has not come.
//!
//! The server's log also has an `event` column: a `decision` row is written when the
//! decision is made, and `outcome` and `feedback` rows with the same `decision_id` follow
//! with the cost, latency, error and quality learned later. Such rows are merged into
//! their decision's row as the log's contract says ([`quiver_log::Merge`]), and a record
//! of a newer format than this build reads (`schema`) is refused.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use ndarray::{concatenate, Array2, Axis};
use quiver_bandit::{limits, Context, HashingFeaturizer, LoggedTerms, Objective, ObjectiveOverride, Request};
use quiver_log::{LogEvent, Merge, SCHEMA_VERSION};

use super::wide::{ids_or_row_numbers, optional_in_range, optional_texts};
use super::{apply_split, feature_columns, read_features, row_slice, standard, Dataset, DatasetReader, Format, Split};
use crate::error::{Result, SimError};
use crate::source::{expand, json_length, read_chunks, Table};

/// A decision log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoggedDataset {
    /// The data path as given.
    pub source: String,
    /// The arms, sorted by name; `arm[i]` indexes this list.
    pub arms: Vec<String>,
    /// Decision ids.
    pub decision_ids: Vec<String>,
    /// Timestamps as written.
    pub timestamps: Vec<String>,
    /// Route names.
    pub routes: Vec<String>,
    /// Logging policy names.
    pub policies: Vec<String>,
    /// Index of the chosen arm.
    pub arm: Vec<usize>,
    /// Probability with which the logger chose it.
    pub propensity: Vec<f64>,
    /// Observed quality, when it arrived.
    pub quality: Vec<Option<f64>>,
    /// Observed cost, USD.
    pub cost_usd: Vec<f64>,
    /// Observed latency, ms (0 where none was recorded).
    pub latency_ms: Vec<f64>,
    /// Whether the log records costs: one converted from a table without them, or another
    /// system's, does not, and its 0s are no observations.
    pub cost_recorded: bool,
    /// Whether the log records latencies: one converted from a table without them, or
    /// another system's, does not, and its 0s are no observations.
    pub latency_recorded: bool,
    /// Whether the call failed.
    pub error: Vec<bool>,
    /// Whether the call's outcome (cost, latency, error) came: a decision of a server's
    /// log may still await it, and then its cost is no observation of 0.
    pub outcome: Vec<bool>,
    /// Prompts, when logged.
    pub prompts: Option<Vec<String>>,
    /// Names of the numeric feature columns.
    pub feature_names: Vec<String>,
    /// Feature values, `rows x feature_names.len()`.
    pub features: Array2<f64>,
    /// The definition of the contexts the logging server built (its decisions'
    /// `context`), when logged.
    pub context: Option<String>,
    /// Each decision's projected prompt embedding (`embedding`), on a log of a route with
    /// an embedding block; None for a decision the hashed features made alone.
    pub embeddings: Option<Vec<Option<Vec<f64>>>>,
    /// Each decision's request's terms beyond its context ([`LoggedTerms`]: models left
    /// out as unavailable, the models it admitted, its own trade-off),
    /// None for a request that asked none; None for a log that records none.
    pub requests: Option<Vec<Option<Box<LoggedTerms>>>>,
    /// The decisions left out as made in an earlier context of the log's last route.
    pub earlier: EarlierContexts,
}

/// Decisions of a log left out as made in another context than its last decision's, by the
/// same route: before it was started afresh in that one (`--reset-route`). A policy is
/// evaluated in one context, and a log is read in its last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EarlierContexts {
    /// The route.
    pub route: String,
    /// Its decisions left out.
    pub decisions: usize,
    /// The contexts they were made in, as first met.
    pub contexts: Vec<String>,
}

impl EarlierContexts {
    /// Adds the decisions `other` left out, of a later part of the same log.
    fn absorb(&mut self, other: EarlierContexts) {
        if other.decisions == 0 {
            return;
        }
        self.route = other.route;
        self.decisions += other.decisions;
        for context in other.contexts {
            if !self.contexts.contains(&context) {
                self.contexts.push(context);
            }
        }
    }
}

impl LoggedDataset {
    /// Number of decisions.
    pub fn rows(&self) -> usize {
        self.arm.len()
    }

    /// The caller features of `row`.
    pub fn row_features(&self, row: usize) -> &[f64] {
        row_slice(&self.features, row)
    }

    /// What the reader of the log `source` should know of a weight on a measure the log
    /// does not record: a cost weight `w_cost` on calls that read as $0, a latency weight
    /// `w_latency` on calls that read as 0 ms; each weighs nothing.
    pub fn unrecorded_notes(&self, source: &str, w_cost: f64, w_latency: f64) -> Vec<String> {
        [
            ("cost", "cost_usd", "$0", w_cost, self.cost_recorded),
            ("latency", "latency_ms", "0 ms", w_latency, self.latency_recorded),
        ]
        .into_iter()
        .filter(|&(.., weight, recorded)| weight != 0.0 && !recorded)
        .map(|(measure, column, zero, weight, _)| {
            format!(
                "{source} records no {measure} (`{column}`): every call reads as {zero}, so a \
                 {measure} weight of {weight} weighs nothing"
            )
        })
        .collect()
    }

    /// What was left out as made in an earlier context ([`EarlierContexts`]), said for the
    /// log's reader; None when nothing was.
    pub fn earlier_contexts_note(&self) -> Option<String> {
        let e = &self.earlier;
        (e.decisions > 0).then(|| {
            format!(
                "{}: {} decisions of route `{}` made in {} (`{}`), before it was started afresh in \
                 `{}`, left out: a policy is evaluated in one context, the log's last",
                self.source,
                e.decisions,
                e.route,
                if e.contexts.len() == 1 { "another context" } else { "other contexts" },
                e.contexts.join("`, `"),
                self.context.as_deref().unwrap_or_default()
            )
        })
    }

    /// The request the route decided `row` on, in `context`: with the request's logged
    /// terms, its trade-off over `route_objective`.
    pub fn request(&self, row: usize, context: Context, route_objective: Objective) -> Request {
        match self.requests.as_ref().and_then(|r| r[row].as_deref()) {
            Some(terms) => terms.request(context, route_objective),
            None => Request::new(context),
        }
    }
}

/// Each row's request terms, from a log's `unavailable`, `admitted`, `w_cost` and
/// `w_latency` columns; None when it has none of them.
fn request_terms(table: &Table) -> Result<Option<Vec<Option<Box<LoggedTerms>>>>> {
    let columns = ["unavailable", "admitted", "w_cost", "w_latency"];
    if !columns.iter().any(|c| table.has(c)) {
        return Ok(None);
    }
    let n = table.rows();
    let lists = |name| Ok::<_, SimError>(table.text_lists(name)?.unwrap_or_else(|| vec![Vec::new(); n]));
    let numbers = |name, range: limits::Bound| -> Result<Vec<Option<f64>>> {
        if table.has(name) {
            optional_in_range(table, name, range.lo, range.hi)
        } else {
            Ok(vec![None; n])
        }
    };
    let (mut unavailable, mut admitted) = (lists("unavailable")?, lists("admitted")?);
    let (w_cost, w_latency) = (numbers("w_cost", limits::W_COST)?, numbers("w_latency", limits::W_LATENCY)?);
    Ok(Some(
        (0..n)
            .map(|row| {
                let terms = LoggedTerms {
                    unavailable: std::mem::take(&mut unavailable[row]),
                    admitted: std::mem::take(&mut admitted[row]),
                    objective: ObjectiveOverride {
                        w_cost: w_cost[row],
                        w_latency: w_latency[row],
                    },
                };
                (!terms.is_empty()).then(|| Box::new(terms))
            })
            .collect(),
    ))
}

/// One table's rows with arm names not yet indexed.
struct Rows {
    /// The file, and its row of each of the table's rows.
    path: PathBuf,
    file_rows: Vec<usize>,
    arm_names: Vec<String>,
    /// The `event` column, when the table has one.
    events: Option<Vec<LogEvent>>,
    /// Whether a row is a decision off-policy estimates take: every decision but a
    /// session's stays and a cascade's escalations (`quiver_log::gave_every_model_a_chance`).
    evaluated: Vec<bool>,
    data: LoggedDataset,
}

/// Whether each row's call reported its outcome, from its `cost` and `latency` columns
/// where the table has them and whether it `failed`: every row of a table without a cost
/// column (its costs are 0); in one with it, a row with a cost or a latency, or that
/// failed (a failure may have cost nothing).
fn outcomes_came(cost: Option<&[Option<f64>]>, latency: Option<&[Option<f64>]>, failed: &[bool]) -> Vec<bool> {
    let Some(cost) = cost else {
        return vec![true; failed.len()];
    };
    let latency_came = |row: usize| latency.is_some_and(|l| l[row].is_some());
    (0..failed.len())
        .map(|row| cost[row].is_some() || latency_came(row) || failed[row])
        .collect()
}

/// The context definition a log's decisions were built in, when logged: one, since a
/// policy is evaluated in one context.
fn decisions_context(table: &Table, is_decision: impl Fn(usize) -> bool) -> Result<Option<String>> {
    let Some(logged) = optional_texts(table, "context")? else {
        return Ok(None);
    };
    let mut seen: Vec<&str> = Vec::new();
    for (row, context) in logged.iter().enumerate() {
        if is_decision(row) && !context.is_empty() && !seen.contains(&context.as_str()) {
            seen.push(context);
        }
    }
    match seen[..] {
        [] => Ok(None),
        [one] => Ok(Some(one.to_string())),
        _ => Err(several_contexts(&table.path, &seen)),
    }
}

/// A log whose decisions were built in several `contexts` that reading it in its last
/// leaves in: several routes' (a `--split` away).
fn several_contexts(path: &Path, contexts: &[&str]) -> SimError {
    let (path, n, contexts) = (path.display(), contexts.len(), contexts.join("`, `"));
    SimError::Mismatch(format!(
        "{path}: the log's decisions were built in {n} contexts (`{contexts}`), and a policy is \
         evaluated in one: a log is read in its last decision's context, leaving out that route's \
         decisions in others (made before it was started afresh), and other routes' are kept; \
         keep one route's decisions with `--split route=NAME`"
    ))
}

/// The route and context of a log's last decision that records its context: the context the
/// log is read in.
#[derive(Debug, Clone, PartialEq)]
struct LastContext {
    route: String,
    context: String,
}

/// The [`LastContext`] of `table`'s decisions (only a decision records its context).
fn last_decision_context(table: &Table) -> Result<Option<LastContext>> {
    let Some(contexts) = optional_texts(table, "context")? else {
        return Ok(None);
    };
    let routes = optional_texts(table, "route")?;
    Ok(contexts.iter().rposition(|c| !c.is_empty()).map(|row| LastContext {
        route: routes.as_ref().map_or_else(String::new, |r| r[row].clone()),
        context: contexts[row].clone(),
    }))
}

/// The caller-feature columns of a log's decisions: `f_0 .. f_{n-1}` for the `n` its
/// context definition takes (a server's other routes may log more), else every `f_*`.
fn logged_feature_columns(table: &Table, context: Option<&str>) -> Vec<String> {
    match context.and_then(HashingFeaturizer::caller_features_in) {
        Some(n) => (0..n).map(quiver_log::feature_name).collect(),
        None => feature_columns(&table.columns()),
    }
}

/// Refuses a log with records of a newer format than this build reads.
fn check_schema(table: &Table) -> Result<()> {
    if !table.has("schema") {
        return Ok(());
    }
    for (row, version) in table.numbers("schema", "")?.into_iter().enumerate() {
        if let Some(v) = version.filter(|&v| v > f64::from(SCHEMA_VERSION)) {
            return Err(table.bad_value(
                row,
                "schema",
                format!("record format version {v}; this build reads up to {SCHEMA_VERSION}"),
            ));
        }
    }
    Ok(())
}

/// The native logged shape.
pub struct LoggedReader;

impl LoggedReader {
    /// The rows of `table`, a part of a log read in its `last` context: a decision of the
    /// last context's route made in another is left out, as before that route was started
    /// afresh (on a server's log, which says which rows are decisions).
    fn read_table(table: &Table, last: Option<&LastContext>) -> Result<Rows> {
        let hint = "a log has one row per decision with arm and propensity";
        check_schema(table)?;
        let events = optional_texts(table, "event")?
            .map(|names| {
                names
                    .iter()
                    .enumerate()
                    .map(|(row, name)| {
                        LogEvent::from_name(name)
                            .ok_or_else(|| table.bad_value(row, "event", format!("unknown event `{name}`")))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        let is_decision = |row: usize| events.as_ref().is_none_or(|e| e[row].merge() == Merge::Starts);
        let arm_names: Vec<String> = table
            .texts("arm", hint)?
            .into_iter()
            .enumerate()
            .map(|(row, a)| match a.filter(|s| !s.is_empty()) {
                Some(a) => Ok(a),
                None if !is_decision(row) => Ok(String::new()),
                None => Err(table.bad_value(row, "arm", "empty arm")),
            })
            .collect::<Result<_>>()?;
        let propensity = table.numbers("propensity", hint)?;
        let propensity = propensity
            .into_iter()
            .enumerate()
            .map(|(row, p)| match p {
                // An outcome or feedback record takes its decision's.
                None if !is_decision(row) => Ok(1.0),
                Some(p) if p > 0.0 && p <= 1.0 => Ok(p),
                Some(0.0) => Err(table.bad_value(
                    row,
                    "propensity",
                    "0 is not a probability in (0, 1]: an arm logged with propensity 0 could not have been chosen",
                )),
                Some(p) => Err(table.bad_value(row, "propensity", format!("{p} is not a probability in (0, 1]"))),
                None => Err(table.bad_value(row, "propensity", "empty; every decision needs its propensity")),
            })
            .collect::<Result<Vec<f64>>>()?;
        let n = table.rows();
        let optional = |column: &str, hi: f64| -> Result<Option<Vec<Option<f64>>>> {
            table
                .has(column)
                .then(|| optional_in_range(table, column, 0.0, hi))
                .transpose()
        };
        let or_zero = |values: &Option<Vec<Option<f64>>>| match values {
            Some(values) => values.iter().map(|v| v.unwrap_or(0.0)).collect(),
            None => vec![0.0; n],
        };
        let (cost, latency) = (
            optional("cost_usd", limits::COST_USD.hi)?,
            optional("latency_ms", limits::LATENCY_MS.hi)?,
        );
        let error: Vec<bool> = if table.has("error") {
            table
                .numbers("error", "")?
                .into_iter()
                .map(|v| v.unwrap_or(0.0) != 0.0)
                .collect()
        } else {
            vec![false; n]
        };
        let outcome = outcomes_came(cost.as_deref(), latency.as_deref(), &error);
        let texts = |column: &str| -> Result<Vec<String>> {
            Ok(optional_texts(table, column)?.unwrap_or_else(|| vec![String::new(); n]))
        };
        let routes = texts("route")?;
        let contexts = texts("context")?;
        let earlier = |row: usize| match last {
            Some(last) if events.is_some() && is_decision(row) => {
                !contexts[row].is_empty() && contexts[row] != last.context && routes[row] == last.route
            }
            _ => false,
        };
        let mut left_out = EarlierContexts::default();
        for row in (0..n).filter(|&r| earlier(r)) {
            left_out.absorb(EarlierContexts {
                route: routes[row].clone(),
                decisions: 1,
                contexts: vec![contexts[row].clone()],
            });
        }
        let kept = |row: usize| is_decision(row) && !earlier(row);
        let context = decisions_context(table, kept)?;
        let feature_names = logged_feature_columns(table, context.as_deref());
        let features = read_features(table, &feature_names, kept)?;
        let (reasons, parents) = (texts("reason")?, texts("parent_decision_id")?);
        let evaluated = (0..n)
            .map(|r| kept(r) && quiver_log::gave_every_model_a_chance(&reasons[r], &parents[r]))
            .collect();
        Ok(Rows {
            path: table.path.clone(),
            file_rows: (0..n).map(|r| table.file_row(r)).collect(),
            events,
            evaluated,
            data: LoggedDataset {
                decision_ids: ids_or_row_numbers(table, "decision_id")?,
                timestamps: texts("timestamp")?,
                routes,
                policies: texts("policy")?,
                propensity,
                quality: if table.has("quality") {
                    optional_in_range(table, "quality", 0.0, 1.0)?
                } else {
                    vec![None; n]
                },
                cost_usd: or_zero(&cost),
                latency_ms: or_zero(&latency),
                // A column of calls all still awaiting their outcome records costs still.
                cost_recorded: cost.is_some(),
                latency_recorded: latency.as_ref().is_some_and(|l| l.iter().any(Option::is_some)),
                outcome,
                error,
                prompts: optional_texts(table, "prompt")?,
                features,
                feature_names,
                context,
                embeddings: table.number_lists("embedding")?,
                requests: request_terms(table)?,
                earlier: left_out,
                ..LoggedDataset::default()
            },
            arm_names,
        })
    }
}

/// What a decision's later records set in its row ([`LogEvent::merge`]), in log order.
#[derive(Debug, Clone, Copy)]
struct Update {
    /// Cost, latency and error, once an outcome record came.
    cost_usd: f64,
    latency_ms: f64,
    /// Quality, NaN until a record carried one.
    quality: f64,
    outcome: bool,
    error: bool,
    /// Whether a decision row took it.
    used: bool,
    /// Where its first record is: file (in the log's order) and row.
    file: u32,
    row: u32,
}

/// The outcome and feedback records of a log by decision, merged: what lets a decision
/// row be completed when it is read, whatever comes between. Keyed by a 128-bit hash of
/// the decision id (two ids of one log sharing it have odds of about `n^2 / 2^129`), so a
/// decision with later records costs 56 bytes and the hash table's slack, whatever its id.
#[derive(Default)]
struct Updates {
    by_decision: HashMap<u128, Update>,
    /// Decisions left out ([`Rows::evaluated`]): their later records are taken by none.
    left_out: HashSet<u128>,
}

fn decision_key(id: &str) -> u128 {
    let half = |salt: u8| {
        let mut hasher = DefaultHasher::new();
        salt.hash(&mut hasher);
        id.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

impl Updates {
    /// Takes in a table's outcome and feedback rows (`file` is the table's place in the log).
    fn collect(&mut self, table: &Rows, file: usize) {
        let Some(events) = &table.events else { return };
        let d = &table.data;
        for (row, event) in events.iter().enumerate() {
            let merge = event.merge();
            if merge == Merge::Starts && !table.evaluated[row] {
                self.left_out.insert(decision_key(&d.decision_ids[row]));
            }
            if matches!(merge, Merge::Starts | Merge::Nothing) {
                continue;
            }
            let update = self
                .by_decision
                .entry(decision_key(&d.decision_ids[row]))
                .or_insert(Update {
                    cost_usd: 0.0,
                    latency_ms: 0.0,
                    quality: f64::NAN,
                    outcome: false,
                    error: false,
                    used: false,
                    file: u32::try_from(file).unwrap_or(u32::MAX),
                    row: u32::try_from(table.file_rows[row]).unwrap_or(u32::MAX),
                });
            if merge == Merge::Outcome {
                update.outcome = true;
                update.cost_usd = d.cost_usd[row];
                update.latency_ms = d.latency_ms[row];
                update.error = d.error[row];
            }
            if let Some(q) = d.quality[row] {
                update.quality = q;
            }
        }
    }

    /// A table's decision rows, each completed by its later records; `(arm names, rows)`.
    fn decisions(&mut self, table: Rows) -> (Vec<String>, LoggedDataset) {
        let keep: Vec<usize> = (0..table.evaluated.len()).filter(|&r| table.evaluated[r]).collect();
        let merged = table.events.is_some();
        if !merged && keep.len() == table.evaluated.len() {
            return (table.arm_names, table.data);
        }
        let d = table.data;
        let pick_texts = |v: &[String]| keep.iter().map(|&r| v[r].clone()).collect::<Vec<_>>();
        let mut out = LoggedDataset {
            decision_ids: pick_texts(&d.decision_ids),
            timestamps: pick_texts(&d.timestamps),
            routes: pick_texts(&d.routes),
            policies: pick_texts(&d.policies),
            propensity: keep.iter().map(|&r| d.propensity[r]).collect(),
            quality: keep.iter().map(|&r| d.quality[r]).collect(),
            cost_usd: keep.iter().map(|&r| d.cost_usd[r]).collect(),
            latency_ms: keep.iter().map(|&r| d.latency_ms[r]).collect(),
            cost_recorded: d.cost_recorded,
            latency_recorded: d.latency_recorded,
            error: keep.iter().map(|&r| d.error[r]).collect(),
            // A server's decision record carries no outcome; its outcome record does.
            outcome: if merged {
                vec![false; keep.len()]
            } else {
                keep.iter().map(|&r| d.outcome[r]).collect()
            },
            prompts: d.prompts.as_ref().map(|p| pick_texts(p)),
            features: d.features.select(Axis(0), &keep),
            embeddings: d
                .embeddings
                .as_ref()
                .map(|e| keep.iter().map(|&r| e[r].clone()).collect()),
            requests: d
                .requests
                .as_ref()
                .map(|q| keep.iter().map(|&r| q[r].clone()).collect()),
            feature_names: d.feature_names,
            context: d.context,
            earlier: d.earlier,
            ..LoggedDataset::default()
        };
        if merged {
            for (i, id) in out.decision_ids.iter().enumerate() {
                let Some(update) = self.by_decision.get_mut(&decision_key(id)) else {
                    continue;
                };
                update.used = true;
                if update.outcome {
                    out.outcome[i] = true;
                    out.cost_usd[i] = update.cost_usd;
                    out.latency_ms[i] = update.latency_ms;
                    out.error[i] = update.error;
                }
                if !update.quality.is_nan() {
                    out.quality[i] = Some(update.quality);
                }
            }
        }
        let names = keep.iter().map(|&r| table.arm_names[r].clone()).collect();
        (names, out)
    }

    /// Refuses records whose decision no row held, naming the first (`files` in the
    /// log's order), once every decision row has been through [`Updates::decisions`].
    fn check_all_used(&self, files: &[PathBuf]) -> Result<()> {
        let orphans = self
            .by_decision
            .iter()
            .filter(|(key, u)| !u.used && !self.left_out.contains(key))
            .map(|(_, u)| u);
        match orphans.min_by_key(|u| (u.file, u.row)) {
            None => Ok(()),
            Some(first) => Err(SimError::BadValue {
                path: files.get(first.file as usize).cloned().unwrap_or_default(),
                row: first.row as usize + 1,
                column: "decision_id".into(),
                reason: "an outcome or feedback record for a decision the log does not hold".into(),
            }),
        }
    }
}

/// Merges the `outcome` and `feedback` rows of in-memory tables into their decisions'
/// rows; tables with no decision row are left out.
fn merge_events(tables: Vec<Rows>) -> Result<Vec<(Vec<String>, LoggedDataset)>> {
    let mut updates = Updates::default();
    for (file, table) in tables.iter().enumerate() {
        updates.collect(table, file);
    }
    let paths: Vec<PathBuf> = tables.iter().map(|t| t.path.clone()).collect();
    // A table of outcomes alone may hold the log's costs and latencies.
    let cost_recorded = tables.iter().any(|t| t.data.cost_recorded);
    let latency_recorded = tables.iter().any(|t| t.data.latency_recorded);
    let mut parts: Vec<_> = tables
        .into_iter()
        .map(|t| updates.decisions(t))
        .map(|(names, mut part)| {
            part.cost_recorded = cost_recorded;
            part.latency_recorded = latency_recorded;
            (names, part)
        })
        .collect();
    updates.check_all_used(&paths)?;
    if parts.iter().any(|(names, _)| !names.is_empty()) {
        // A table of decisions all left out counts them still.
        let mut earlier = EarlierContexts::default();
        for (_, part) in &mut parts {
            earlier.absorb(std::mem::take(&mut part.earlier));
        }
        parts.retain(|(names, _)| !names.is_empty());
        parts[0].1.earlier = earlier;
    }
    Ok(parts)
}

/// Indexes the arm names of every table against one sorted arm list and concatenates.
pub(crate) fn combine_logged(
    source: &str,
    parts: Vec<(Vec<String>, LoggedDataset)>,
    arms: Option<Vec<String>>,
) -> Result<LoggedDataset> {
    let mut arms = arms.unwrap_or_else(|| {
        let mut all: Vec<String> = parts
            .iter()
            .flat_map(|(names, _)| names.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    });
    arms.sort();
    arms.dedup();
    let mut out = LoggedDataset {
        source: source.to_string(),
        ..LoggedDataset::default()
    };
    // The parts' features, stacked once at the end (stacking part by part copies the
    // rows read so far once per part).
    let mut features = Vec::with_capacity(parts.len());
    for (i, (names, mut part)) in parts.into_iter().enumerate() {
        let rows = part.decision_ids.len();
        if let (Some(mine), Some(theirs)) = (&out.context, &part.context) {
            if mine != theirs {
                return Err(several_contexts(Path::new(source), &[mine, theirs]));
            }
        }
        if i > 0 && part.feature_names != out.feature_names {
            return Err(SimError::Mismatch(
                "files of one log must share their f_* columns".into(),
            ));
        }
        if i > 0 && part.prompts.is_some() != out.prompts.is_some() {
            return Err(SimError::Mismatch(
                "files of one log must all have, or all lack, prompts".into(),
            ));
        }
        out.feature_names = std::mem::take(&mut part.feature_names);
        for name in &names {
            let index = arms
                .binary_search(name)
                .map_err(|_| SimError::Mismatch(format!("arm `{name}` is not among the dataset's arms")))?;
            out.arm.push(index);
        }
        out.decision_ids.append(&mut part.decision_ids);
        out.timestamps.append(&mut part.timestamps);
        out.routes.append(&mut part.routes);
        out.policies.append(&mut part.policies);
        out.propensity.append(&mut part.propensity);
        out.quality.append(&mut part.quality);
        out.cost_usd.append(&mut part.cost_usd);
        out.latency_ms.append(&mut part.latency_ms);
        out.cost_recorded |= part.cost_recorded;
        out.latency_recorded |= part.latency_recorded;
        out.error.append(&mut part.error);
        out.outcome.append(&mut part.outcome);
        features.push(std::mem::take(&mut part.features));
        match (&mut out.prompts, part.prompts) {
            (Some(mine), Some(mut theirs)) => mine.append(&mut theirs),
            (None, Some(theirs)) if i == 0 => out.prompts = Some(theirs),
            _ => {}
        }
        if part.embeddings.is_some() && out.embeddings.is_none() {
            out.embeddings = Some(vec![None; out.decision_ids.len() - rows]);
        }
        if let Some(mine) = out.embeddings.as_mut() {
            mine.extend(part.embeddings.unwrap_or_else(|| vec![None; rows]));
        }
        if part.requests.is_some() && out.requests.is_none() {
            out.requests = Some(vec![None; out.decision_ids.len() - rows]);
        }
        if let Some(mine) = out.requests.as_mut() {
            mine.extend(part.requests.unwrap_or_else(|| vec![None; rows]));
        }
        if out.context.is_none() {
            out.context = part.context;
        }
        out.earlier.absorb(part.earlier);
    }
    if features.len() == 1 {
        out.features = features.remove(0);
    } else if !features.is_empty() {
        out.features = concatenate(Axis(0), &features.iter().map(Array2::view).collect::<Vec<_>>())
            .map(standard)
            .map_err(|e| SimError::Mismatch(format!("the log's f_* columns: {e}")))?;
    }
    out.arms = arms;
    Ok(out)
}

/// A decision log read a chunk at a time, in log order, for logs larger than memory:
/// each file in tables of at most `chunk_rows` rows ([`read_chunks`]), each table's
/// decision rows completed by their later records. Opening it reads the log once for its
/// arms, its number of decisions and every decision's later records (`Updates`); each
/// [`LogStream::for_each_chunk`] reads it again. What stays in memory is one table and
/// those records: nothing for a log of one row per decision, 60 to 120 bytes per decision
/// for a server's log with its outcome and feedback records.
pub struct LogStream {
    files: LogFiles,
    /// The log with no rows: its source, arms, feature names, context definition, and
    /// whether it has prompts and embeddings.
    header: LoggedDataset,
    /// The context the log is read in.
    last: Option<LastContext>,
    rows: usize,
    updates: Updates,
}

impl LogStream {
    /// Opens the log at `source` (a file, directory or glob of logged data), keeping only
    /// rows whose `split` column has its value.
    pub fn open(source: &str, format: Format, split: Option<&Split>, chunk_rows: usize) -> Result<Self> {
        if !matches!(format, Format::Auto | Format::Logged) {
            return Err(SimError::InvalidOption(format!(
                "{source}: format {format} is not a decision log; logs are read with --format logged"
            )));
        }
        let paths = expand(source)?;
        let mut stream = LogStream {
            files: LogFiles {
                json_bytes: paths
                    .iter()
                    .map(|p| quiver_log::read_current(p, json_length))
                    .collect::<Result<_>>()?,
                paths,
                split: split.cloned(),
                chunk_rows,
            },
            header: LoggedDataset {
                source: source.to_string(),
                ..LoggedDataset::default()
            },
            last: None,
            rows: 0,
            updates: Updates::default(),
        };
        stream.last = stream.files.last_context()?;
        let mut arms = std::collections::BTreeSet::new();
        let mut described = false;
        stream.files.each_table(|file, table| {
            // Told it is a log, the reader names what is missing.
            if format == Format::Auto && !LoggedReader.detects(&table.columns()) {
                return Err(SimError::InvalidOption(format!(
                    "{}: not a decision log (no arm and propensity columns); a full-information \
                     table is replayed by `quiver replay`, or made a log by `quiver data convert \
                     --to logged`",
                    table.path.display()
                )));
            }
            let rows = LoggedReader::read_table(&table, stream.last.as_ref())?;
            let header = &mut stream.header;
            let decisions = (0..rows.arm_names.len())
                .filter(|&r| rows.evaluated[r])
                .inspect(|&r| {
                    arms.insert(rows.arm_names[r].clone());
                })
                .count();
            if decisions > 0 && !described {
                described = true;
                header.feature_names = rows.data.feature_names.clone();
                header.prompts = rows.data.prompts.as_ref().map(|_| Vec::new());
            }
            if header.context.is_none() {
                header.context = rows.data.context.clone();
            }
            if rows.data.embeddings.is_some() {
                header.embeddings = Some(Vec::new());
            }
            if rows.data.requests.is_some() {
                header.requests = Some(Vec::new());
            }
            header.earlier.absorb(rows.data.earlier.clone());
            header.cost_recorded |= rows.data.cost_recorded;
            header.latency_recorded |= rows.data.latency_recorded;
            stream.rows += decisions;
            stream.updates.collect(&rows, file);
            Ok(())
        })?;
        stream.header.arms = arms.into_iter().collect();
        Ok(stream)
    }

    /// The log with no rows (see [`LogStream`]); what a context builder needs of it.
    pub fn header(&self) -> &LoggedDataset {
        &self.header
    }

    /// Decisions in the log.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Calls `f` with each chunk of decisions in log order, arms indexed as in
    /// [`LogStream::header`]; chunks may be empty.
    pub fn for_each_chunk(&mut self, mut f: impl FnMut(LoggedDataset) -> Result<()>) -> Result<()> {
        let mut updates = std::mem::take(&mut self.updates);
        let (header, last) = (&self.header, self.last.as_ref());
        let result = self.files.each_table(|_, table| {
            let rows = LoggedReader::read_table(&table, last)?;
            let (names, part) = updates.decisions(rows);
            if names.is_empty() {
                return Ok(());
            }
            f(header.chunk_of(names, part, &table.path)?)
        });
        let checked = result.and_then(|()| updates.check_all_used(&self.files.paths));
        self.updates = updates;
        checked
    }
}

/// The files of a log, and how they are read.
struct LogFiles {
    paths: Vec<PathBuf>,
    /// Of each JSON-lines file, the bytes of complete records when the log was opened:
    /// every pass reads those, however the server appends meanwhile.
    json_bytes: Vec<Option<u64>>,
    split: Option<Split>,
    chunk_rows: usize,
}

impl LogFiles {
    /// Calls `f` with each non-empty table of the log (after the split) and its file's
    /// place. A segment compacted since the log was opened is read in its Parquet form.
    fn each_table(&self, mut f: impl FnMut(usize, Table) -> Result<()>) -> Result<()> {
        for file in 0..self.paths.len() {
            self.tables_of(file, |table| f(file, table))?;
        }
        Ok(())
    }

    /// Calls `f` with each non-empty table of file `file` (after the split).
    fn tables_of(&self, file: usize, mut f: impl FnMut(Table) -> Result<()>) -> Result<()> {
        let (path, json_bytes) = (&self.paths[file], self.json_bytes[file]);
        let tables = quiver_log::read_current(path, |current| {
            read_chunks(current, self.chunk_rows, json_bytes.filter(|_| current == path.as_path()))
        })?;
        for table in tables {
            let mut table = table?;
            if table.rows() == 0 {
                continue;
            }
            if let Some(split) = &self.split {
                table = apply_split(table, split)?;
            }
            f(table)?;
        }
        Ok(())
    }

    /// The context the log is read in: its last decision's (after the split), read from the
    /// last file that has one.
    fn last_context(&self) -> Result<Option<LastContext>> {
        for file in (0..self.paths.len()).rev() {
            let mut last = None;
            self.tables_of(file, |table| {
                last = last_decision_context(&table)?.or(last.take());
                Ok(())
            })?;
            if last.is_some() {
                return Ok(last);
            }
        }
        Ok(None)
    }
}

impl LoggedDataset {
    /// A chunk of decisions of the log this header describes, its arms indexed as here.
    fn chunk_of(&self, names: Vec<String>, mut part: LoggedDataset, path: &Path) -> Result<LoggedDataset> {
        let differs = |what: &str| {
            SimError::Mismatch(format!(
                "{}: every decision of one log must have the same {what} as its first",
                path.display()
            ))
        };
        if let (Some(mine), Some(theirs)) = (&self.context, &part.context) {
            if mine != theirs {
                return Err(several_contexts(path, &[mine, theirs]));
            }
        }
        if part.feature_names != self.feature_names {
            return Err(differs("f_* columns"));
        }
        if part.prompts.is_some() != self.prompts.is_some() {
            return Err(differs("prompt column (present or absent)"));
        }
        if self.embeddings.is_some() && part.embeddings.is_none() {
            part.embeddings = Some(vec![None; names.len()]);
        }
        if self.requests.is_some() && part.requests.is_none() {
            part.requests = Some(vec![None; names.len()]);
        }
        part.context = self.context.clone();
        combine_logged(&self.source, vec![(names, part)], Some(self.arms.clone()))
    }
}

impl DatasetReader for LoggedReader {
    fn detects(&self, columns: &[String]) -> bool {
        columns.iter().any(|c| c == "arm") && columns.iter().any(|c| c == "propensity")
    }

    fn read(&self, source: &str, tables: &[Table]) -> Result<Dataset> {
        let mut last = None;
        for table in tables.iter().rev() {
            last = last_decision_context(table)?;
            if last.is_some() {
                break;
            }
        }
        let rows = tables
            .iter()
            .map(|t| Self::read_table(t, last.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let parts = if rows.iter().any(|r| r.events.is_some()) {
            merge_events(rows)?
        } else {
            rows.into_iter().map(|r| (r.arm_names, r.data)).collect()
        };
        Ok(Dataset::Logged(combine_logged(source, parts, None)?))
    }
}
