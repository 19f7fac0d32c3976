//! Cascades: a route whose chosen model's answer fails a check escalates to a stronger
//! model, and the client gets the stronger one's answer.
//!
//! The route's policy decides the first model as ever. When its answer (a non-streamed
//! completion) fails the route's check, the proxy logs a child decision of the route on
//! the `then` model (`parent_decision_id` names the first; propensity 1, since the check's
//! verdict on the answer decided it; its `reason` says which check failed), calls it, and
//! answers with its completion and the child's id in `x-quiver-decision-id`. Both calls'
//! cost and latency are recorded, each under its own decision, and the first answer counts
//! as quality 0 for the route's learner, as a failed call does. If the escalation fails,
//! or no call can be made (no child is logged then), the first answer is served after
//! all. `quiver replay --cascade` simulates the same on
//! wide data.
//!
//! The checks (any that fails escalates): `regex`, which the answer's text must match;
//! `json`, the answer's text must parse as JSON; `min_mean_logprob`, the mean token
//! log-probability the upstream gives (the proxy asks for them, and takes them out of an
//! answer whose client did not ask) must be at least this; an answer without them passes
//! this check.

use quiver_log::ESCALATION;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, ServeError};

/// A route's cascade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeConfig {
    /// The model to escalate to (one of the route's).
    pub then: String,
    /// A regular expression the answer's text must match.
    #[serde(default)]
    pub regex: Option<String>,
    /// The answer's text must parse as JSON.
    #[serde(default)]
    pub json: bool,
    /// The least mean token log-probability of an answer that passes.
    #[serde(default)]
    pub min_mean_logprob: Option<f64>,
}

/// A cascade's checks, ready to run.
#[derive(Debug, Clone)]
pub struct Cascade {
    /// The model to escalate to.
    pub then: String,
    regex: Option<Regex>,
    json: bool,
    min_mean_logprob: Option<f64>,
}

impl CascadeConfig {
    /// The checks of the cascade of route `route` over `models`; a cascade that names a
    /// model the route lacks, checks nothing or has a regex that does not compile is
    /// refused.
    pub fn compile(&self, route: &str, models: &[String]) -> Result<Cascade> {
        let refuse = |why: String| ServeError::Config(format!("route `{route}`: cascade: {why}"));
        if !models.contains(&self.then) {
            return Err(refuse(format!(
                "`then = \"{}\"` is not one of the route's models ({})",
                self.then,
                models.join(", ")
            )));
        }
        if self.regex.is_none() && !self.json && self.min_mean_logprob.is_none() {
            return Err(refuse(
                "give a check: `regex`, `json` or `min_mean_logprob`".into(),
            ));
        }
        if let Some(min) = self.min_mean_logprob.filter(|m| !(m.is_finite() && *m <= 0.0)) {
            return Err(refuse(format!(
                "min_mean_logprob {min} must be a log-probability (<= 0)"
            )));
        }
        let regex = self
            .regex
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| refuse(format!("regex: {e}")))?;
        Ok(Cascade {
            then: self.then.clone(),
            regex,
            json: self.json,
            min_mean_logprob: self.min_mean_logprob,
        })
    }
}

/// The text of a completion's first choice (a chat message's content, or a text
/// completion's text).
fn answer_text(completion: &Value) -> &str {
    let choice = &completion["choices"][0];
    choice["message"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .unwrap_or_default()
}

/// The mean token log-probability of a completion's first choice, where given: a chat's
/// `logprobs.content[].logprob`, or a text completion's `logprobs.token_logprobs`.
fn mean_logprob(completion: &Value) -> Option<f64> {
    let logprobs = &completion["choices"][0]["logprobs"];
    let values: Vec<f64> = match logprobs["content"].as_array() {
        Some(tokens) => tokens.iter().filter_map(|t| t["logprob"].as_f64()).collect(),
        None => logprobs["token_logprobs"]
            .as_array()?
            .iter()
            .filter_map(Value::as_f64)
            .collect(),
    };
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

impl Cascade {
    /// Why `completion` escalates, or `None` when it passes every check.
    pub fn failed_check(&self, completion: &Value) -> Option<String> {
        let text = answer_text(completion);
        if let Some(regex) = self.regex.as_ref().filter(|r| !r.is_match(text)) {
            return Some(format!("{ESCALATION}the answer does not match `{regex}`"));
        }
        if self.json && serde_json::from_str::<Value>(text).is_err() {
            return Some(format!("{ESCALATION}the answer is not JSON"));
        }
        match (self.min_mean_logprob, mean_logprob(completion)) {
            (Some(min), Some(mean)) if mean < min => Some(format!(
                "{ESCALATION}the answer's mean token log-probability {mean:.3} is under {min}"
            )),
            _ => None,
        }
    }

    /// Asks the upstream for the answer's token log-probabilities when a check reads them
    /// and the client did not (it sent none, `null` or `false`; a text completion's number
    /// asks); returns whether it did, so that they are taken out again
    /// ([`Cascade::strip_logprobs`]).
    pub fn ask_logprobs(&self, request: &mut Value, chat: bool) -> bool {
        let client_asked = request
            .get("logprobs")
            .is_some_and(|v| v.as_bool() == Some(true) || v.is_number());
        if self.min_mean_logprob.is_none() || client_asked {
            return false;
        }
        request["logprobs"] = if chat { Value::Bool(true) } else { Value::from(1) };
        true
    }

    /// Takes the token log-probabilities out of a completion's choices.
    pub fn strip_logprobs(completion: &mut Value) {
        for choice in completion["choices"].as_array_mut().into_iter().flatten() {
            if let Some(choice) = choice.as_object_mut() {
                choice.shift_remove("logprobs");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(content: &str, logprobs: Option<&[f64]>) -> Value {
        let mut choice = json!({"index": 0, "message": {"role": "assistant", "content": content}});
        if let Some(l) = logprobs {
            choice["logprobs"] =
                json!({"content": l.iter().map(|v| json!({"token": "t", "logprob": v})).collect::<Vec<_>>()});
        }
        json!({"choices": [choice]})
    }

    fn cascade(config: Value) -> Result<Cascade> {
        let config: CascadeConfig = serde_json::from_value(config).unwrap();
        config.compile("r", &["small".into(), "big".into()])
    }

    #[test]
    fn each_check_escalates_what_it_fails() {
        let json_check = cascade(json!({"then": "big", "json": true})).unwrap();
        assert_eq!(json_check.failed_check(&chat("{\"a\": 1}", None)), None);
        assert_eq!(
            json_check
                .failed_check(&chat("sure! {\"a\": 1}", None))
                .as_deref(),
            Some("cascade: the answer is not JSON")
        );
        let regex = cascade(json!({"then": "big", "regex": "^[0-9]+$"})).unwrap();
        assert_eq!(regex.failed_check(&chat("42", None)), None);
        assert!(regex
            .failed_check(&chat("about 42", None))
            .unwrap()
            .contains("does not match `^[0-9]+$`"));
        // A text completion's text is checked the same way.
        assert_eq!(regex.failed_check(&json!({"choices": [{"text": "7"}]})), None);
        let sure = cascade(json!({"then": "big", "min_mean_logprob": -0.5})).unwrap();
        assert_eq!(sure.failed_check(&chat("x", Some(&[-0.1, -0.3]))), None);
        let unsure = sure.failed_check(&chat("x", Some(&[-0.1, -1.5]))).unwrap();
        assert!(unsure.contains("-0.800 is under -0.5"), "{unsure}");
        assert_eq!(
            sure.failed_check(&chat("x", None)),
            None,
            "no logprobs: the check cannot judge"
        );
        let text = json!({"choices": [{"text": "x", "logprobs": {"token_logprobs": [-2.0, -1.0]}}]});
        assert!(sure.failed_check(&text).is_some());
    }

    #[test]
    fn logprobs_are_asked_for_and_taken_out_only_when_the_client_did_not_ask() {
        let sure = cascade(json!({"then": "big", "min_mean_logprob": -0.5})).unwrap();
        let mut request = json!({"messages": []});
        assert!(sure.ask_logprobs(&mut request, true));
        assert_eq!(request["logprobs"], true);
        let mut asked = json!({"prompt": "p", "logprobs": 3});
        assert!(!sure.ask_logprobs(&mut asked, false));
        assert_eq!(asked["logprobs"], 3);
        let mut declined = json!({"messages": [], "logprobs": false});
        assert!(sure.ask_logprobs(&mut declined, true));
        assert_eq!(declined["logprobs"], true);
        let mut answer = chat("x", Some(&[-0.1]));
        Cascade::strip_logprobs(&mut answer);
        assert_eq!(answer, chat("x", None));
        let regex = cascade(json!({"then": "big", "regex": "x"})).unwrap();
        assert!(!regex.ask_logprobs(&mut json!({}), true));
    }

    #[test]
    fn a_cascade_that_cannot_work_is_refused() {
        for (config, why) in [
            (
                json!({"then": "huge", "json": true}),
                "not one of the route's models (small, big)",
            ),
            (json!({"then": "big"}), "give a check"),
            (json!({"then": "big", "regex": "("}), "regex:"),
            (
                json!({"then": "big", "min_mean_logprob": 0.5}),
                "must be a log-probability",
            ),
        ] {
            let err = cascade(config.clone()).unwrap_err().to_string();
            assert!(
                err.contains("route `r`: cascade") && err.contains(why),
                "{config}: {err}"
            );
        }
        let unknown = serde_json::from_value::<CascadeConfig>(json!({"then": "big", "jsn": true}));
        assert!(unknown.unwrap_err().to_string().contains("unknown field `jsn`"));
    }
}
