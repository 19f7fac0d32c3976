//! `--out DIR`: the summary, the per-step curves and the plots of a replay.

use std::path::Path;

use polars::prelude::*;

use crate::error::{Result, SimError};
use crate::metrics::mean_ci95;
use crate::plot::{self, chart, Series};
use crate::replay::{Feedback, ReplaySettings, Run};
use crate::report::Summary;
use crate::write::write_frame;

fn write_text(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| SimError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The hull through the frontier models' `points`, by cost, drawn on to `costliest`: it is
/// flat past its costliest model, and a policy there is seen against the bar it is
/// measured by.
fn hull_line(points: &[[f64; 2]], costliest: f64) -> Vec<(f64, f64)> {
    let mut line: Vec<(f64, f64)> = points.iter().map(|p| (p[0], p[1])).collect();
    if let Some(&(last_cost, last_quality)) = line.last() {
        if costliest > last_cost {
            line.push((costliest, last_quality));
        }
    }
    line
}

/// Writes `summary.json`, `curves.parquet` (one row per variant, seed, feedback and
/// checkpoint), `frontier.svg` (cost-quality of every policy, its full-information
/// reference when run, and every single model) and `regret.svg`
/// (cumulative regret, mean across seeds with its 95% band).
pub fn write_out(dir: &Path, summary: &Summary, settings: &ReplaySettings, runs: &[Run]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| SimError::Write {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let json = serde_json::to_string_pretty(summary).map_err(|e| SimError::Write {
        path: dir.join("summary.json"),
        reason: e.to_string(),
    })?;
    write_text(&dir.join("summary.json"), &(json + "\n"))?;

    let mut policy = Vec::new();
    let mut feedback = Vec::new();
    let mut seed = Vec::new();
    let mut step = Vec::new();
    let mut regret = Vec::new();
    let mut quality = Vec::new();
    let mut cost = Vec::new();
    for run in runs {
        for p in &run.curve {
            policy.push(settings.variants[run.variant].label.clone());
            feedback.push(match run.feedback {
                Feedback::Bandit => "bandit",
                Feedback::Full => "full",
            });
            seed.push(run.seed);
            step.push(p.step as u64);
            regret.push(p.regret);
            quality.push(p.mean_quality);
            cost.push(p.mean_cost_usd);
        }
    }
    let path = dir.join("curves.parquet");
    let mut frame = DataFrame::new_infer_height(vec![
        Column::new("policy".into(), policy),
        Column::new("feedback".into(), feedback),
        Column::new("seed".into(), seed),
        Column::new("step".into(), step),
        Column::new("regret".into(), regret),
        Column::new("mean_quality".into(), quality),
        Column::new("mean_cost_usd".into(), cost),
    ])
    .map_err(|e| SimError::Write {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_frame(&mut frame, &path)?;

    let mut frontier: Vec<Series> = summary
        .policies
        .iter()
        .map(|p| Series {
            label: p.policy.clone(),
            points: vec![(p.mean_cost_usd, p.mean_quality)],
            band: Vec::new(),
            markers: true,
            point_labels: Vec::new(),
            color: None,
        })
        .collect();
    frontier.extend(summary.cascades.iter().map(|c| Series {
        label: c.cascade.clone(),
        points: vec![(c.mean_cost_usd, c.mean_quality)],
        band: Vec::new(),
        markers: true,
        point_labels: Vec::new(),
        color: None,
    }));
    let full: Vec<(f64, f64)> = summary
        .policies
        .iter()
        .filter_map(|p| p.full_information.as_ref())
        .map(|f| (f.mean_cost_usd, f.mean_quality))
        .collect();
    if !full.is_empty() {
        frontier.push(Series {
            label: "full information (each policy shown every outcome)".into(),
            points: full,
            band: Vec::new(),
            markers: true,
            point_labels: Vec::new(),
            color: Some(plot::FULL_INFORMATION),
        });
    }
    frontier.push(Series {
        label: "single models".into(),
        points: summary
            .single_arms
            .iter()
            .map(|a| (a.mean_cost_usd, a.mean_quality))
            .collect(),
        band: Vec::new(),
        markers: true,
        point_labels: summary.single_arms.iter().map(|a| a.arm.clone()).collect(),
        color: Some(plot::SINGLE_MODELS),
    });
    let costliest = frontier
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(f64::NEG_INFINITY, f64::max);
    frontier.push(Series {
        label: "hull: best fixed mix of <= 2 models".into(),
        points: hull_line(&summary.frontier.points, costliest),
        band: Vec::new(),
        markers: false,
        point_labels: Vec::new(),
        color: Some(plot::HULL),
    });
    write_text(
        &dir.join("frontier.svg"),
        &chart(
            "Cost-quality frontier",
            "a policy above the hull beats every fixed mix of models at its cost",
            "mean cost per request (USD)",
            "mean quality",
            &frontier,
        ),
    )?;

    let regret_series: Vec<Series> = settings
        .variants
        .iter()
        .enumerate()
        .map(|(v, variant)| {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|r| r.variant == v && r.feedback == Feedback::Bandit)
                .collect();
            let points = mine.first().map_or(0, |r| r.curve.len());
            let mut line = Vec::new();
            let mut band = Vec::new();
            for i in 0..points {
                let values: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| r.curve.get(i).map(|p| p.regret))
                    .collect();
                let x = mine[0].curve[i].step as f64;
                let (mean, ci) = mean_ci95(&values);
                line.push((x, mean));
                band.extend(ci.map(|[lo, hi]| (x, lo, hi)));
            }
            Series {
                label: variant.label.clone(),
                points: line,
                band,
                markers: false,
                point_labels: Vec::new(),
                color: None,
            }
        })
        .collect();
    write_text(
        &dir.join("regret.svg"),
        &chart(
            "Cumulative regret vs the best fixed arm",
            "line: mean over seeds; band: 95% interval across seeds (Student t; none from one seed)",
            "requests",
            "regret (reward units)",
            &regret_series,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::hull_line;

    #[test]
    fn the_hull_is_drawn_flat_to_the_costliest_point() {
        let frontier = [[0.1, 0.5], [0.4, 0.8]];
        assert_eq!(
            hull_line(&frontier, 0.9),
            vec![(0.1, 0.5), (0.4, 0.8), (0.9, 0.8)]
        );
        // Nothing costs more than the costliest frontier model: the line ends there.
        assert_eq!(hull_line(&frontier, 0.4), vec![(0.1, 0.5), (0.4, 0.8)]);
        assert!(hull_line(&[], 1.0).is_empty());
    }
}
