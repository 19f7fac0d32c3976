//! The `quiver` binary end to end: replay, OPE and conversion on generated fixtures, byte
//! determinism, and the error messages of bad input.

#![allow(clippy::unwrap_used)] // a test helper that fails should panic

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quiver_sim::data::{load_wide, Format, Split, WideDataset};

fn quiver(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(args)
        .output()
        .expect("run quiver")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "quiver failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    assert!(!o.status.success(), "quiver should have failed");
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// What `quiver replay --data path` says, refusing `path` once it holds `text`.
fn replay_refusal(path: &Path, text: impl AsRef<[u8]>) -> String {
    std::fs::write(path, text).unwrap();
    stderr(&quiver(&["replay", "--data", path.to_str().unwrap()]))
}

/// A fresh directory under the target dir for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `quiver data convert` of `data` to the shape `to` in `out`, with `extra` options.
fn convert(data: &Path, to: &str, out: &Path, extra: &[&str]) -> Output {
    let (data, out) = (data.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec!["data", "convert", "--data", data, "--to", to, "--out", out];
    args.extend_from_slice(extra);
    quiver(&args)
}

/// Logs the wide table `data` under `policy` into `out` with `quiver data convert`.
fn convert_to_log(data: &Path, policy: &str, out: &Path) {
    stdout(&convert(data, "logged", out, &["--logging-policy", policy]));
}

/// A small wide table: three arms, a feature, prompts with tasks.
fn wide_fixture(dir: &Path) -> PathBuf {
    let path = dir.join("wide.csv");
    let mut text = String::from("id,prompt,task,f_len,quality|small,cost|small,quality|mid/v1,cost|mid/v1,quality|big:2024,cost|big:2024\n");
    for i in 0..120 {
        let code = i % 3 == 0;
        let (qs, qm, qb) = if code { (0, i % 2, 1) } else { (1, 1, (i / 2) % 2) };
        text.push_str(&format!(
            "r{i},\"{} {i}\",{},{},{qs},0.0001,{qm},0.0005,{qb},0.002\n",
            if code {
                "def f(): return"
            } else {
                "What is the capital of"
            },
            if code { "code" } else { "chat" },
            (i % 7) as f64 / 7.0
        ));
    }
    std::fs::write(&path, text).expect("write fixture");
    path
}

#[test]
fn replay_json_is_byte_identical_for_the_same_seed_and_has_the_stable_fields() {
    let dir = scratch("replay_json");
    let data = wide_fixture(&dir);
    let args = [
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--policies",
        "linucb(alpha=0.5),lints(v=0.3),eps(0.1),random",
        "--seeds",
        "4",
        "--w-cost",
        "20",
        "--json",
    ];
    let first = stdout(&quiver(&args));
    let second = stdout(&quiver(&args));
    assert_eq!(first, second);
    let v: serde_json::Value = serde_json::from_str(&first).expect("json");
    assert_eq!(v["dataset"]["rows"], 120);
    assert_eq!(v["dataset"]["arms"].as_array().unwrap().len(), 3);
    // mid/v1 answers 100 of the 120 fixture rows well, small 80, big:2024 ~60.
    assert_eq!(v["best_single"], "mid/v1");
    for key in ["arm", "mean_quality", "mean_cost_usd", "mean_latency_ms"] {
        assert!(v["single_arms"][0].get(key).is_some(), "single_arms.{key}");
    }
    assert!(
        v["oracle"]["mean_quality"].as_f64().unwrap()
            >= v["single_arms"][1]["mean_quality"].as_f64().unwrap()
    );
    let p = &v["policies"][0];
    for key in [
        "policy",
        "seeds",
        "mean_quality",
        "mean_cost_usd",
        "mean_latency_ms",
        "mean_reward",
        "regret",
        "quality_vs_best_single",
        "cost_vs_best_single",
        "ci95",
    ] {
        assert!(p.get(key).is_some(), "policies[0].{key}");
    }
    assert_eq!(p["seeds"], 4);
    // The fixture has no latency: unknown, not zero.
    assert!(p["mean_latency_ms"].is_null() && v["single_arms"][0]["mean_latency_ms"].is_null());
    // The hull at the policy's cost, read off the single models' frontier, and the lift.
    let (q, c) = (
        p["mean_quality"].as_f64().unwrap(),
        p["mean_cost_usd"].as_f64().unwrap(),
    );
    let hull = hull_at(&v, c);
    assert!((p["hull_quality_at_cost"].as_f64().unwrap() - hull).abs() < 1e-12);
    assert!((p["lift_over_hull"].as_f64().unwrap() - (q - hull)).abs() < 1e-12);
    assert!(
        p["regret_vs_hull_at_budget"].is_null() && p["hull_quality_at_budget"].is_null(),
        "no budget, no hull at it"
    );
    let ratio = p["mean_quality"].as_f64().unwrap() / v["single_arms"][1]["mean_quality"].as_f64().unwrap();
    assert!((p["quality_vs_best_single"].as_f64().unwrap() - ratio).abs() < 1e-12);
}

/// The frontier of a replay's `--json` read at cost `c`: the chord between the two
/// frontier models around it, flat beyond either end.
fn hull_at(v: &serde_json::Value, c: f64) -> f64 {
    let frontier: Vec<(f64, f64)> = v["frontier"]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    frontier
        .windows(2)
        .find(|w| w[0].0 <= c && c <= w[1].0)
        .map(|w| w[0].1 + (c - w[0].0) / (w[1].0 - w[0].0) * (w[1].1 - w[0].1))
        .unwrap_or(if c < frontier[0].0 {
            frontier[0].1
        } else {
            frontier[frontier.len() - 1].1
        })
}

/// Under a budget the report reads the hull at the budget too, and the regret against it
/// is the rows times the quality that mix would have had over the policy's.
#[test]
fn a_budgeted_replay_reports_the_hull_at_its_budget() {
    let dir = scratch("replay_budget_hull");
    let data = wide_fixture(&dir);
    let v: serde_json::Value = serde_json::from_str(&stdout(&quiver(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--policies",
        "linucb(alpha=0.5)",
        "--seeds",
        "2",
        "--budget",
        "0.0003",
        "--json",
    ])))
    .expect("json");
    let p = &v["policies"][0];
    let hull = hull_at(&v, 0.0003);
    // Between the cheapest model ($0.0001) and the middle one ($0.0005): a chord, not a point.
    assert!(hull > v["frontier"]["points"][0][1].as_f64().unwrap(), "{hull}");
    assert!((p["hull_quality_at_budget"].as_f64().unwrap() - hull).abs() < 1e-12);
    let q = p["mean_quality"].as_f64().unwrap();
    let rows = v["dataset"]["rows"].as_f64().unwrap();
    assert!((p["regret_vs_hull_at_budget"].as_f64().unwrap() - rows * (hull - q)).abs() < 1e-9);
    // The best model costs $0.002, beyond the budget: it binds, and the pacer puts a positive
    // price on a dollar over the reward's weight of 0.
    assert_eq!(p["paced"], true);
    assert_eq!(p["w_cost"], 0.0);
    assert!(p["pacer_cost_weight"].as_f64().unwrap() > 0.0, "{p}");

    // A policy that ignores the budget is compared with a mix held to it, and said to be.
    let table = stdout(&quiver(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--policies",
        "fixed(big:2024),fixed(small)",
        "--seeds",
        "2",
        "--budget",
        "0.0003",
    ]));
    let line = |policy: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{policy}: regret vs the hull at the budget")))
            .unwrap_or_else(|| panic!("{policy}: {table}"))
            .to_string()
    };
    // $0.002 a request against $0.0003.
    assert!(line("fixed(arm=big:2024)").ends_with("(it spent 667% of the budget: its lift, against the hull at its own cost, is the comparison that holds)"), "{table}");
    assert!(!line("fixed(arm=small)").contains("it spent"), "{table}");
    // Its row says the budget paced nothing, and no pacer priced a dollar.
    let row = table
        .lines()
        .find(|l| l.starts_with("fixed(arm=small) "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.ends_with(" unpaced         -"), "{row}");

    // A budget below the cheapest model ($0.0001) is said to be one no policy keeps.
    let table = stdout(&quiver(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--policies",
        "fixed(small)",
        "--seeds",
        "1",
        "--budget",
        "0.00005",
    ]));
    assert!(
        table.contains(
            "the budget 0.000050 is below every model's mean cost (small, the cheapest, costs \
             0.000100): no policy can keep it, and the hull at the budget is small's quality"
        ),
        "{table}"
    );
    // One above the best model's ($0.0005) binds nothing, likely a share without its %.
    let table = stdout(&quiver(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--policies",
        "fixed(small)",
        "--seeds",
        "1",
        "--budget",
        "25",
    ]));
    assert!(
        table.contains(
            "the budget 25.000000 is above the best model's mean cost (mid/v1 costs 0.000500): \
             it keeps no policy from the best model"
        ),
        "{table}"
    );
}

/// One seed gives no interval: its spread says nothing of the seeds' variance. Two do.
#[test]
fn one_seed_has_no_interval() {
    let dir = scratch("replay_one_seed");
    let data = wide_fixture(&dir);
    let run = |seeds: &str| -> serde_json::Value {
        let args = [
            "replay",
            "--data",
            data.to_str().unwrap(),
            "--policies",
            "ucb1",
            "--seeds",
            seeds,
            "--json",
        ];
        serde_json::from_str(&stdout(&quiver(&args))).expect("json")
    };
    let one = &run("1")["policies"][0];
    for key in ["mean_quality", "mean_cost_usd", "mean_reward", "regret"] {
        assert!(one["ci95"][key].is_null(), "{key}: {}", one["ci95"]);
    }
    let two = &run("2")["policies"][0];
    let [lo, hi] = [0, 1].map(|i| two["ci95"]["mean_quality"][i].as_f64().unwrap());
    let q = two["mean_quality"].as_f64().unwrap();
    assert!(lo <= q && q <= hi, "{lo} {q} {hi}");
}

#[test]
fn replay_out_writes_summary_curves_and_plots() {
    let dir = scratch("replay_out");
    let data = wide_fixture(&dir);
    let out = dir.join("out");
    let answer = stdout(&quiver(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--policies",
        "ucb1,random",
        "--seeds",
        "2",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]));
    // The summary is the run's own answer.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary,
        serde_json::from_str::<serde_json::Value>(&answer).unwrap()
    );
    // The curves end where the summary does: each policy's last checkpoint, averaged over
    // its two seeds, is its mean quality.
    use polars::prelude::{ChunkAgg, ParquetReader, SerReader};
    let curves = ParquetReader::new(std::fs::File::open(out.join("curves.parquet")).unwrap());
    let curves = curves.finish().unwrap();
    let text = |name: &str| curves.column(name).unwrap().str().unwrap().clone();
    let (policies, feedback) = (text("policy"), text("feedback"));
    let steps = curves.column("step").unwrap().u64().unwrap().clone();
    let seeds = curves.column("seed").unwrap().u64().unwrap().clone();
    let quality = curves.column("mean_quality").unwrap().f64().unwrap().clone();
    let last_step = steps.max().unwrap();
    for policy in summary["policies"].as_array().unwrap() {
        let name = policy["policy"].as_str().unwrap();
        let ends: Vec<(u64, f64)> = (0..curves.height())
            .filter(|&i| policies.get(i) == Some(name) && feedback.get(i) == Some("bandit"))
            .filter(|&i| steps.get(i) == Some(last_step))
            .map(|i| (seeds.get(i).unwrap(), quality.get(i).unwrap()))
            .collect();
        assert_eq!(ends.len(), 2, "{name}: {ends:?}");
        let mean = ends.iter().map(|(_, q)| q).sum::<f64>() / 2.0;
        let reported = policy["mean_quality"].as_f64().unwrap();
        assert!((mean - reported).abs() < 1e-9, "{name}: {mean} vs {reported}");
    }
    for file in ["frontier.svg", "regret.svg"] {
        let meta = std::fs::metadata(out.join(file)).unwrap_or_else(|_| panic!("{file} missing"));
        assert!(meta.len() > 100, "{file} is empty");
    }
    let svg = std::fs::read_to_string(out.join("frontier.svg")).unwrap();
    assert!(svg.contains("hull: best fixed mix of &lt;= 2 models") && svg.contains("ucb1(c=1)"));
    // Every single model is labelled on the chart.
    for arm in ["small", "mid/v1", "big:2024"] {
        assert!(svg.contains(&format!(">{arm}</text>")), "{arm} unlabelled");
    }
}

/// A cascade on the built-in scenario is replayed beside a router: its figures in the JSON
/// summary (both calls' cost; the hull at its cost) and its point on the frontier plot.
#[test]
fn a_cascade_is_replayed_beside_the_policies_and_drawn_on_the_frontier() {
    let dir = scratch("replay_cascade");
    let out = dir.join("out");
    let cascade = "first=mistralai/mixtral-8x7b-chat,then=gpt-4-1106-preview,check_error=0.1";
    let o = quiver(&[
        "replay",
        "--policies",
        "linucb(alpha=0.1)",
        "--cascade",
        cascade,
        "--seeds",
        "2",
        "--no-full-information",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let c = &v["cascades"][0];
    assert_eq!(c["first"], "mistralai/mixtral-8x7b-chat");
    assert_eq!(
        (c["pass"].as_f64(), c["check_error"].as_f64(), c["seeds"].as_u64()),
        (Some(0.5), Some(0.1), Some(2))
    );
    let single = |name: &str| {
        let arms = v["single_arms"].as_array().unwrap();
        let arm = arms.iter().find(|a| a["arm"] == name).unwrap();
        (
            arm["mean_quality"].as_f64().unwrap(),
            arm["mean_cost_usd"].as_f64().unwrap(),
        )
    };
    let ((_, cheap), (_, dear)) = (
        single("mistralai/mixtral-8x7b-chat"),
        single("gpt-4-1106-preview"),
    );
    let escalated = c["escalated"].as_f64().unwrap();
    assert!(escalated > 0.0 && escalated < 1.0, "{escalated}");
    // Every request pays the first call, the escalated ones the second too: the mean cost
    // is the first model's plus the escalated share of the second's, up to the rows'
    // covariance of escalation and price (prices are per token: a few percent here).
    let cost = c["mean_cost_usd"].as_f64().unwrap();
    let expected = cheap + escalated * dear;
    assert!((cost - expected).abs() < 0.1 * expected, "{cost} vs {expected}");
    let lift = c["mean_quality"].as_f64().unwrap() - c["hull_quality_at_cost"].as_f64().unwrap();
    assert!((c["lift_over_hull"].as_f64().unwrap() - lift).abs() < 1e-12);
    let svg = std::fs::read_to_string(out.join("frontier.svg")).unwrap();
    assert!(
        svg.contains(
            "cascade mistralai/mixtral-8x7b-chat &gt; gpt-4-1106-preview (pass 0.5, check error 0.1)"
        ),
        "the cascade is not on the frontier plot"
    );
    // A misnamed model stops the replay, named.
    let o = quiver(&[
        "replay",
        "--policies",
        "random",
        "--cascade",
        "first=gpt-9,then=gpt-4-1106-preview",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("unknown model `gpt-9`"),
        "{}",
        stderr(&o)
    );
}

/// A table without costs becomes a log without them, not one of free calls: `quiver ope`
/// says its cost estimates say nothing, and priors fitted from it learn no usage.
/// Amounts too small for six decimals are printed with their digits, not as zero.
#[test]
fn a_table_of_very_cheap_calls_shows_its_amounts() {
    let dir = scratch("very_cheap");
    let data = dir.join("cheap.csv");
    let mut text = String::from("id,quality|a,cost|a,quality|b,cost|b\n");
    for i in 0..40 {
        text.push_str(&format!("{i},{},0.00000001,1,0.00000004\n", i % 2));
    }
    std::fs::write(&data, text).unwrap();
    let table = stdout(&quiver(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--policies",
        "linucb",
        "--budget",
        "50%",
        "--seeds",
        "1",
    ]));
    let single = |arm: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("single:{arm} ")))
            .unwrap()
    };
    assert!(
        single("a").contains(" 1.00e-8 ") && single("b").contains(" 4.00e-8 "),
        "{table}"
    );
    let linucb = table.lines().find(|l| l.starts_with("linucb")).unwrap();
    assert!(linucb.contains(" 2.00e-8 "), "the budget: {table}");
    assert!(!table.contains("0.000000"), "{table}");
}

#[test]
fn a_table_without_costs_logs_no_costs() {
    let dir = scratch("convert_no_cost");
    let data = dir.join("free.csv");
    let mut text = String::from("id,quality|a,quality|b\n");
    for i in 0..40 {
        text.push_str(&format!("{i},{},{}\n", i % 2, (i / 2) % 2));
    }
    std::fs::write(&data, text).unwrap();
    let log = dir.join("log.csv");
    convert_to_log(&data, "random", &log);
    let header = std::fs::read_to_string(&log).unwrap();
    let header = header.lines().next().unwrap();
    assert!(
        !header.contains("cost_usd") && header.contains("error"),
        "{header}"
    );
    let run = quiver(&[
        "ope",
        "--data",
        log.to_str().unwrap(),
        "--policy",
        "fixed(a)",
        "--w-cost",
        "10",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&run)).expect("json");
    assert_eq!(v["rows"], 40, "every call's outcome still counts as come");
    let note = String::from_utf8_lossy(&run.stderr);
    assert!(
        note.contains("log.csv records no cost (`cost_usd`): every call reads as $0, so a cost weight of 10 weighs nothing"),
        "{note}"
    );
    // A log whose calls all await their outcomes records costs still: converted again, its
    // calls stay awaited, not free.
    let awaiting = dir.join("awaiting.csv");
    std::fs::write(
        &awaiting,
        "decision_id,arm,propensity,quality,cost_usd,latency_ms,error\nr:1,a,0.5,,,,false\nr:2,b,0.5,,,,false\n",
    )
    .unwrap();
    let again = dir.join("again.csv");
    stdout(&convert(&awaiting, "logged", &again, &[]));
    let header = std::fs::read_to_string(&again).unwrap();
    assert!(header.lines().next().unwrap().contains("cost_usd"), "{header}");
    let priors = dir.join("priors.json");
    stdout(&quiver(&[
        "priors",
        "fit",
        "--data",
        log.to_str().unwrap(),
        "--out",
        priors.to_str().unwrap(),
    ]));
    let priors: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&priors).unwrap()).unwrap();
    for arm in ["a", "b"] {
        assert_eq!(priors["arms"][arm]["usage"]["requests"], 0.0, "{arm}: {priors}");
    }
}

#[test]
fn wide_data_converts_to_a_log_that_ope_reads() {
    let dir = scratch("convert_ope");
    let data = wide_fixture(&dir);
    let log = dir.join("log.parquet");
    convert_to_log(&data, "eps(0.5)", &log);
    let run = quiver(&[
        "ope",
        "--data",
        log.to_str().unwrap(),
        "--policy",
        "fixed(small)",
        "--bootstrap",
        "200",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&run)).expect("json");
    assert_eq!(v["rows"], 120);
    // Without weights the value is quality alone, which is said: the log does not know
    // its route's.
    let note = String::from_utf8_lossy(&run.stderr);
    assert!(
        note.contains("the value is quality alone (no --w-cost or --w-latency)"),
        "{note}"
    );
    // The table has no latencies, and neither has its log (not 0s): a latency weight is
    // said to weigh nothing, by `quiver ope` and by `quiver replay` on the log.
    for (command, policy) in [("ope", "--policy"), ("replay", "--policies")] {
        let run = quiver(&[
            command,
            "--data",
            log.to_str().unwrap(),
            policy,
            "fixed(small)",
            "--w-latency",
            "0.5",
        ]);
        let note = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.success()
                && note.contains("records no latency (`latency_ms`): every call reads as 0 ms, so a latency weight of 0.5 weighs nothing"),
            "{command}: {note}"
        );
    }
    let quality = &v["metrics"][1];
    assert_eq!(quality["metric"], "quality");
    let names: Vec<&str> = quality["estimates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["estimator"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["replay", "ips", "snips", "dm", "dr", "sndr", "switch-dr"]);
    // An estimator named twice is estimated once.
    let run = quiver(&[
        "ope",
        "--data",
        log.to_str().unwrap(),
        "--policy",
        "fixed(small)",
        "--estimators",
        "ips,dr,ips",
        "--json",
    ]);
    let once: serde_json::Value = serde_json::from_str(&stdout(&run)).expect("json");
    let named: Vec<&str> = (once["metrics"][1]["estimates"].as_array().unwrap().iter())
        .map(|e| e["estimator"].as_str().unwrap())
        .collect();
    assert_eq!(named, ["ips", "dr"]);
    // `quiver replay` on a log evaluates each policy off-policy along it, and says so (on
    // stderr too, where JSON output leaves no header).
    let output = quiver(&[
        "replay",
        "--data",
        log.to_str().unwrap(),
        "--policies",
        "fixed(small),random",
    ]);
    let table = stdout(&output);
    assert!(
        table.contains("120 decisions") && table.contains("fixed(arm=small)") && table.contains("random"),
        "{table}"
    );
    let note = String::from_utf8_lossy(&output.stderr);
    assert!(
        note.contains("is a decision log: the policies are evaluated off-policy"),
        "{note}"
    );
    // What only a simulation of full information takes is refused, each option named.
    let err = stderr(&quiver(&[
        "replay",
        "--data",
        log.to_str().unwrap(),
        "--budget",
        "0.01",
        "--out",
        "unwritten",
    ]));
    assert!(
        err.contains("--budget, --out apply to tables of every model's outcome")
            && err.contains("is read as a decision log (its columns are a log's)")
            && !Path::new("unwritten").exists(),
        "{err}"
    );
    // So are the simulation's knobs, which a log's exact estimates would ignore.
    let err = stderr(&quiver(&[
        "replay",
        "--data",
        log.to_str().unwrap(),
        "--seeds",
        "9",
        "--feedback-delay",
        "30",
        "--prior-cap",
        "5",
    ]));
    assert!(
        err.contains("--seeds, --feedback-delay, --prior-cap apply to tables of every model's outcome"),
        "{err}"
    );
    // fixed(small)'s true quality on the fixture is 80/120; SNIPS with eps(0.5) logging is close.
    let snips = quality["estimates"][2]["value"].as_f64().unwrap();
    assert!((snips - 80.0 / 120.0).abs() < 0.2, "snips {snips}");

    // A logger that gives some model no chance writes no log: one that always chooses
    // one model, or greedy UCB1 after its first tries.
    for (logger, says) in [
        ("fixed(small)", "gave some model no chance on 120 of 120 requests"),
        ("ucb1", "gave some model no chance on "),
    ] {
        let unsupported = dir.join("unsupported.parquet");
        let err = stderr(&quiver(&[
            "data",
            "convert",
            "--data",
            data.to_str().unwrap(),
            "--to",
            "logged",
            "--logging-policy",
            logger,
            "--out",
            unsupported.to_str().unwrap(),
        ]));
        assert!(
            err.contains(says) && err.contains("give it a floor") && !unsupported.exists(),
            "{logger}: {err}"
        );
    }
    convert_to_log(&data, "ucb1(floor=0.05)", &dir.join("floored.parquet"));
    // A floor of 1/K or more logs at random whatever the policy: said, not refused.
    let uniform = dir.join("uniform.parquet");
    let output = convert(
        &data,
        "logged",
        &uniform,
        &["--logging-policy", "ucb1(floor=0.5)"],
    );
    stdout(&output);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("every decision is uniform at random"), "{said}");
}

/// A session's stay and a cascade's escalation are left out of an estimate whether the
/// log says which rows are decisions (`event`) or holds decisions only; and an outcome or
/// feedback record needs no propensity of its own.
#[test]
fn ope_leaves_out_stays_and_escalations_of_any_log() {
    let dir = scratch("ope_stays");
    let ope = |name: &str, text: &str| -> serde_json::Value {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = stdout(&quiver(&[
            "ope",
            "--data",
            path.to_str().unwrap(),
            "--policy",
            "fixed(b)",
            "--estimators",
            "ips,snips,replay",
            "--bootstrap",
            "0",
            "--json",
        ]));
        serde_json::from_str(&out).unwrap()
    };
    // Decisions 1 and 3 count: weights 0 and 2, qualities 1 and 0, so every estimate is 0.
    let decisions_only = ope(
        "decisions.csv",
        "arm,propensity,quality,reason,parent_decision_id\n\
         a,0.5,1,,\n\
         b,1,1,session: stay,\n\
         b,0.5,0,,\n\
         b,1,1,,x1\n",
    );
    let with_events = ope(
        "events.csv",
        "event,decision_id,arm,propensity,quality,reason,parent_decision_id\n\
         decision,1,a,0.5,,,\n\
         decision,2,b,1,,session: stay,\n\
         decision,3,b,0.5,,,\n\
         decision,4,b,1,,,1\n\
         feedback,1,,,1,,\n\
         feedback,2,,,1,,\n\
         feedback,3,,,0,,\n\
         feedback,4,,,1,,\n",
    );
    for report in [&decisions_only, &with_events] {
        assert_eq!(report["rows"], 2, "{report}");
        let estimates = report["metrics"][1]["estimates"].as_array().unwrap();
        assert_eq!(estimates.len(), 3);
        for estimate in estimates {
            assert_eq!(estimate["value"], 0.0, "{estimate}");
        }
    }
}

/// An Open Bandit Dataset log (its columns, three items) is evaluated by `quiver ope
/// --format obd` as the same log converted by `quiver data convert` first, and named as
/// the file it was read from.
#[test]
fn ope_reads_an_open_bandit_dataset_log_as_its_conversion() {
    let dir = scratch("ope_obd");
    let obd = dir.join("all.csv");
    let mut text = String::from(
        ",timestamp,item_id,position,click,propensity_score,user-item_affinity_0,user-item_affinity_1\n",
    );
    for i in 0..90 {
        let (item, position) = (i % 3, 1 + i % 2);
        let click = u8::from(item == 1 && i % 4 != 0);
        let propensity = [0.5, 0.3, 0.2][item];
        text.push_str(&format!(
            "{i},2019-11-24 00:00:{:02},{item},{position},{click},{propensity},{},0.1\n",
            i % 60,
            i % 5
        ));
    }
    std::fs::write(&obd, text).unwrap();
    let converted = dir.join("all.parquet");
    let obd_path = obd.to_str().unwrap();
    stdout(&quiver(&[
        "data",
        "convert",
        "--data",
        obd_path,
        "--format",
        "obd",
        "--to",
        "logged",
        "--out",
        converted.to_str().unwrap(),
    ]));
    let ope = |data: &str, format: &str| -> serde_json::Value {
        let out = stdout(&quiver(&[
            "ope",
            "--data",
            data,
            "--format",
            format,
            "--policy",
            "fixed(item_1)",
            "--json",
        ]));
        serde_json::from_str(&out).unwrap()
    };
    let direct = ope(obd_path, "obd");
    assert_eq!(ope(obd_path, "auto"), direct, "auto tells the dataset's columns");
    let mut via_conversion = ope(converted.to_str().unwrap(), "logged");
    assert_eq!(direct["dataset"], obd_path);
    assert_eq!(direct["rows"], 90);
    via_conversion["dataset"] = direct["dataset"].clone();
    assert_eq!(direct, via_conversion);
    // IPS of always item 1: its clicks weighed by 1 / 0.3, over every row.
    let clicks = (0..90).filter(|i| i % 3 == 1 && i % 4 != 0).count() as f64;
    let ips = direct["metrics"][1]["estimates"][1]["value"].as_f64().unwrap();
    assert!((ips - clicks / 0.3 / 90.0).abs() < 1e-9, "ips {ips}");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("quiver-ope-"))
        .collect();
    assert!(left.is_empty(), "the conversion is removed: {left:?}");
}

#[test]
fn malformed_inputs_name_the_file_row_and_column() {
    let dir = scratch("errors");
    let bad_quality = dir.join("bad_quality.csv");
    let err = replay_refusal(&bad_quality, "id,quality|a,quality|b\n1,0.5,1\n2,abc,0\n");
    assert!(
        err.contains("bad_quality.csv: row 2, column `quality|a`: `abc` is not a number"),
        "{err}"
    );

    // A record the CSV reader cannot take is named by its row and line.
    let ragged = dir.join("ragged.csv");
    let err = replay_refusal(&ragged, "id,quality|a,quality|b\n1,0.5,1\n2,0.5,1,1\n");
    assert!(
        err.contains("ragged.csv: cannot read: row 2 (line 3) has 4 fields where the header has 3"),
        "{err}"
    );
    // One short of a field too, which the reader would take for an empty cell.
    let short = dir.join("short.csv");
    let err = replay_refusal(&short, "id,quality|a,quality|b\n1,0.5,1\n2,0.5\n");
    assert!(
        err.contains("short.csv: cannot read: row 2 (line 3) has 2 fields where the header has 3"),
        "{err}"
    );

    let out_of_range = dir.join("range.csv");
    let err = replay_refusal(&out_of_range, "quality|a,quality|b\n0.5,1\n0.2,1.7\n");
    assert!(
        err.contains("range.csv: row 2, column `quality|b`: 1.7 is outside [0, 1]; rescale to [0, 1]"),
        "{err}"
    );

    let no_arm = dir.join("no_arm.csv");
    std::fs::write(&no_arm, "decision_id,propensity,quality\n1,0.5,1\n").unwrap();
    let err = stderr(&quiver(&[
        "ope",
        "--data",
        no_arm.to_str().unwrap(),
        "--format",
        "logged",
        "--policy",
        "random",
    ]));
    assert!(err.contains("no_arm.csv: missing column `arm`"), "{err}");

    for (name, p) in [("zero.csv", "0"), ("big.csv", "1.5")] {
        let path = dir.join(name);
        std::fs::write(&path, format!("arm,propensity,quality\na,0.5,1\nb,{p},0\n")).unwrap();
        let err = stderr(&quiver(&[
            "ope",
            "--data",
            path.to_str().unwrap(),
            "--policy",
            "random",
        ]));
        assert!(
            err.contains(&format!(
                "{name}: row 2, column `propensity`: {p} is not a probability in (0, 1]"
            )),
            "{err}"
        );
        assert_eq!(err.contains("could not have been chosen"), p == "0", "{err}");
    }

    // Text that is not UTF-8, and a JSON line that is not an object, are named by line and row.
    let latin1 = dir.join("latin1.csv");
    let err = replay_refusal(&latin1, b"prompt,quality|a,quality|b\nhi,0.5,1\ncaf\xe9,1,0\n");
    assert!(
        err.contains("latin1.csv: cannot read: line 3 is not UTF-8 text (byte 40)"),
        "{err}"
    );
    let bad_line = dir.join("bad_line.jsonl");
    let err = replay_refusal(
        &bad_line,
        "{\"quality|a\": 1, \"quality|b\": 0}\n\n{\"quality|a\": 1,\n",
    );
    assert!(
        err.contains("bad_line.jsonl: cannot read: row 2: not JSON: "),
        "{err}"
    );
    // A field whose values change kind is named where it changes.
    let err = replay_refusal(&bad_line, "{\"quality|a\": 1, \"quality|b\": 0}\n{\"quality|a\": null, \"quality|b\": 0}\n{\"quality|a\": true, \"quality|b\": 1}\n");
    assert!(
        err.contains(
            "bad_line.jsonl: cannot read: row 3, field `quality|a`: `true` is a boolean where row 1 has a number"
        ),
        "{err}"
    );

    let broken = dir.join("broken.csv");
    let err = replay_refusal(&broken, "quality|a,quality|b\n0.5,1\n\"unterminated,0\n");
    assert!(err.contains("broken.csv"), "{err}");

    let err = stderr(&quiver(&[
        "replay",
        "--data",
        dir.join("nothing-*.csv").to_str().unwrap(),
    ]));
    assert!(err.contains("no data file matches"), "{err}");
    let err = stderr(&quiver(&[
        "replay",
        "--data",
        bad_quality.to_str().unwrap(),
        "--policies",
        "linucb(alpha=x)",
    ]));
    assert!(err.contains("alpha=x is not a number"), "{err}");
}

/// What a new user trips on gets a short, precise answer: a negative cost names its bound
/// as written in the docs, a negative flag value reaches the flag's own check, an unknown
/// arm lists the arms, an incomplete row is named, and an OS error is said once.
#[test]
fn a_new_users_mistakes_get_precise_errors() {
    let dir = scratch("new_user");
    let negative = dir.join("negative.csv");
    let err = replay_refusal(&negative, "quality|a,cost|a,quality|b,cost|b\n1,-0.5,0,0.1\n");
    assert!(
        err.contains("negative.csv: row 1, column `cost|a`: -0.5 is outside [0, 1000]"),
        "{err}"
    );
    let huge = dir.join("huge.csv");
    let err = replay_refusal(&huge, "quality|a,cost|a,quality|b,cost|b\n1,1e300,0,0.1\n");
    assert!(
        err.contains("huge.csv: row 1, column `cost|a`: 1e300 is outside [0, 1000]"),
        "{err}"
    );

    let err = stderr(&quiver(&["replay", "--budget", "-1"]));
    assert!(
        err.contains("'--budget <BUDGET>': the budget is -1.0, outside [1e-9, 1000] USD per request"),
        "{err}"
    );
    // A weight on what the table does not hold is said to weigh nothing.
    let no_latency = dir.join("no_latency.csv");
    std::fs::write(
        &no_latency,
        "quality|a,cost|a,quality|b,cost|b\n1,0.1,0,0.2\n0,0.1,1,0.2\n",
    )
    .unwrap();
    let run = quiver(&[
        "replay",
        "--data",
        no_latency.to_str().unwrap(),
        "--w-latency",
        "0.5",
        "--seeds",
        "1",
        "--policies",
        "random",
    ]);
    assert!(run.status.success());
    let note = String::from_utf8_lossy(&run.stderr);
    assert!(
        note.contains("has no latency columns (`latency_ms|MODEL`): every call takes 0 ms, so a latency weight of 0.5 weighs nothing"),
        "{note}"
    );

    // ... unless --latency-model gives it latencies.
    let mut modelled = vec![
        "replay",
        "--data",
        no_latency.to_str().unwrap(),
        "--w-latency",
        "0.5",
    ];
    modelled.extend(["--seeds", "1", "--policies", "random", "--latency-model", "500"]);
    let run = quiver(&modelled);
    let note = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && !note.contains("weighs nothing"), "{note}");
    // Flags that would do nothing are refused.
    let table = no_latency.to_str().unwrap();
    let passes = [
        "replay",
        "--data",
        table,
        "--train-passes",
        "3",
        "--train-feedback",
        "bandit",
    ];
    let err = stderr(&quiver(&passes));
    assert!(
        err.contains("--train-passes 3: there is no training data to pass over; give --train or --holdout"),
        "{err}"
    );
    // A table without a complete row names the first row it left out, not a flag.
    let incomplete = dir.join("incomplete.csv");
    let err = replay_refusal(&incomplete, "quality|a,quality|b\n1,\n,0\n");
    assert!(
        err.contains("no complete rows to evaluate: ")
            && err.contains("incomplete.csv: 2 incomplete rows left out")
            && err.contains("row 1: no quality for `b`"),
        "{err}"
    );
    let err = stderr(&quiver(&[
        "replay",
        "--data",
        table,
        "--train",
        incomplete.to_str().unwrap(),
    ]));
    assert!(
        err.contains("--train: no rows of") && err.contains("row 1: no quality for `b`"),
        "{err}"
    );
    let err = stderr(&quiver(&["replay", "--data", table, "--feedback-delay", "2"]));
    assert!(
        err.contains("--feedback-delay 2: as many decisions as the 2 evaluated rows or more"),
        "{err}"
    );
    let err = stderr(&quiver(&["replay", "--data", table, "--pacer-step", "0.1"]));
    assert!(
        err.contains("--pacer-step sets the budget pacer's step: give --budget"),
        "{err}"
    );

    let err = stderr(&quiver(&["replay", "--budget", "abc"]));
    assert!(
        err.contains("`abc` is neither USD per request (0.0012) nor a share of the best model's cost (25%)"),
        "{err}"
    );

    // A feature beyond the learner's bounds is named where it is, not when it is learned.
    let large = dir.join("large.csv");
    std::fs::write(
        &large,
        "id,f_tokens,quality|a,quality|b\n1,3,1,0\n2,2000000,0,1\n",
    )
    .unwrap();
    for command in ["replay", "priors"] {
        let mut args = vec![command, "--data", large.to_str().unwrap()];
        if command == "priors" {
            args.splice(1..1, ["fit"]);
            args.extend(["--out", "unwritten.json"]);
        }
        let err = stderr(&quiver(&args));
        assert!(
            err.contains("large.csv: row 2, column `f_tokens`: 2000000 is outside [-1000000, 1000000]"),
            "{command}: {err}"
        );
    }

    // A model without a value on any row leaves no row to fit the others on: said so,
    // naming it, rather than that no model has a quality.
    let empty = dir.join("empty.csv");
    std::fs::write(
        &empty,
        "id,prompt,quality|a,quality|b\n1,hello,,0.7\n2,foo,,0.2\n",
    )
    .unwrap();
    let err = stderr(&quiver(&[
        "priors",
        "fit",
        "--data",
        empty.to_str().unwrap(),
        "--out",
        "unwritten.json",
    ]));
    assert!(
        err.contains("row 1: no quality for `a`") && err.contains("no row holds every model's values"),
        "{err}"
    );

    // A cost column whose model has no quality column is a misspelled id, not a free model.
    let stray = dir.join("stray.csv");
    let err = replay_refusal(&stray, "quality|a,quality|b,cost|A,cost|B\n1,0,0.1,0.2\n");
    assert!(
        err.contains("`cost|A` names a model without a quality column (models: a, b)"),
        "{err}"
    );

    // A column named twice would be read as two; the file and the column are named.
    let twice = dir.join("twice.csv");
    let err = replay_refusal(&twice, "id,quality|a,quality|a\n1,1,0\n2,0,1\n");
    assert!(
        err.contains("twice.csv") && err.contains("column `quality|a` appears more than once"),
        "{err}"
    );

    // A log without qualities estimates its cost, and says that quality is undefined
    // rather than estimating it as 0.
    let costs_only = dir.join("costs_only.csv");
    std::fs::write(
        &costs_only,
        "decision_id,arm,propensity,cost_usd\n1,a,0.5,0.001\n2,b,0.5,0.002\n3,a,0.5,0.001\n",
    )
    .unwrap();
    let output = quiver(&[
        "ope",
        "--data",
        costs_only.to_str().unwrap(),
        "--policy",
        "fixed(b)",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("none of its 3 decisions has a quality"));
    for m in v["metrics"].as_array().unwrap() {
        let ips = &m["estimates"][1];
        assert_eq!(ips["estimator"], "ips");
        match m["metric"].as_str().unwrap() {
            "cost_usd" => assert!(
                (ips["value"].as_f64().unwrap() - 0.002 / 0.5 / 3.0).abs() < 1e-12,
                "{m}"
            ),
            _ => assert!(ips["value"].is_null(), "{m}"),
        }
    }

    // Nothing to learn from is an error, not an empty result.
    let unjudged = dir.join("unjudged.csv");
    std::fs::write(&unjudged, "id,task,quality|a,quality|b\n1,x,,\n2,y,,\n").unwrap();
    let priors = dir.join("priors.json");
    let err = stderr(&quiver(&[
        "priors",
        "fit",
        "--data",
        unjudged.to_str().unwrap(),
        "--out",
        priors.to_str().unwrap(),
    ]));
    assert!(err.contains("no row holds every model's values"), "{err}");
    assert!(!priors.exists());
    let judged = dir.join("judged.csv");
    std::fs::write(&judged, "id,task,quality|a,quality|b\n1,x,1,0\n2,y,0,1\n").unwrap();
    let judged = judged.to_str().unwrap();
    let err = stderr(&quiver(&[
        "replay",
        "--data",
        judged,
        "--train",
        judged,
        "--train-split",
        "task=z",
    ]));
    assert!(
        err.contains("the split task=z keeps nothing: no row of")
            && err.contains("judged.csv has `task` equal to `z`"),
        "{err}"
    );

    // Priors of none of the table's models are refused; of some of them, are said to
    // leave the others cold and their own others unused.
    let priors_of = |columns: &str, name: &str| {
        let table = dir.join(format!("{name}.csv"));
        std::fs::write(&table, format!("id,task,{columns}\n1,x,1,0\n2,y,0,1\n")).unwrap();
        let priors = dir.join(format!("{name}.json"));
        stdout(&quiver(&[
            "priors",
            "fit",
            "--data",
            table.to_str().unwrap(),
            "--out",
            priors.to_str().unwrap(),
        ]));
        priors
    };
    let replay_with = |priors: &Path| {
        quiver(&[
            "replay",
            "--data",
            judged,
            "--priors",
            priors.to_str().unwrap(),
            "--seeds",
            "1",
        ])
    };
    let err = stderr(&replay_with(&priors_of("quality|x,quality|y", "other_models")));
    assert!(
        err.contains("other_models.json: ")
            && err.contains("the priors have none of the models (a, b); their models: x, y"),
        "{err}"
    );
    let output = replay_with(&priors_of("quality|x,quality|a", "some_models"));
    stdout(&output);
    let warned = String::from_utf8_lossy(&output.stderr);
    assert!(
        warned.contains("no prior for b: they start cold; priors of x are not used"),
        "{warned}"
    );

    // Priors fitted with tasks x and y one-hot would weigh another table's tasks by slot.
    let judged_priors = dir.join("judged_priors.json");
    let judged_priors = judged_priors.to_str().unwrap();
    stdout(&quiver(&[
        "priors",
        "fit",
        "--data",
        judged,
        "--out",
        judged_priors,
    ]));
    let table = stdout(&quiver(&[
        "replay",
        "--data",
        judged,
        "--priors",
        judged_priors,
        "--seeds",
        "1",
    ]));
    // A table without costs has no cost share of the best model to show.
    assert!(!table.contains("NaN"), "{table}");
    let renamed = dir.join("renamed.csv");
    std::fs::write(&renamed, "id,task,quality|a,quality|b\n1,w,1,0\n2,y,0,1\n").unwrap();
    let err = stderr(&quiver(&[
        "replay",
        "--data",
        renamed.to_str().unwrap(),
        "--priors",
        judged_priors,
        "--seeds",
        "1",
    ]));
    assert!(
        err.contains("task labels [x, y] one-hot, and these contexts carry [w, y]"),
        "{err}"
    );

    // Settings that would be silently overridden, or change nothing, are refused.
    for (args, refusal) in [
        (
            &["--priors", judged_priors, "--prior-cap", "30"][..],
            "a priors file keeps the cap it was fitted with",
        ),
        (
            &["--w-cost", "999", "--sweep", "w-cost=0..10:2"][..],
            "--w-cost and --sweep w-cost=... both set the cost weight",
        ),
        (
            &["--drift", "a@2:-0.5"][..],
            "step 2 is past the 2 evaluated rows",
        ),
        (&["--prior-cap", "-5"][..], "--prior-cap: "),
        (
            &["--prior-cap", "30"][..],
            "--prior-cap caps priors fitted from --train",
        ),
        (
            &[
                "--train",
                judged,
                "--train-feedback",
                "bandit",
                "--prior-cap",
                "30",
            ][..],
            "--prior-cap caps priors fitted from --train",
        ),
    ] {
        let mut command = vec!["replay", "--data", judged, "--seeds", "1"];
        command.extend_from_slice(args);
        let err = stderr(&quiver(&command));
        assert!(err.contains(refusal), "{args:?}: {err}");
    }

    // Training rows without the prompts the evaluated rows have would teach another context.
    let prompted = dir.join("prompted.csv");
    std::fs::write(&prompted, "id,prompt,quality|a,quality|b\n1,hi,1,0\n2,bye,0,1\n").unwrap();
    let err = stderr(&quiver(&[
        "replay",
        "--data",
        prompted.to_str().unwrap(),
        "--train",
        judged,
    ]));
    assert!(
        err.contains("prompted.csv has a prompt column and") && err.contains("judged.csv has none"),
        "{err}"
    );

    // Files of one table that differ in their columns are named; so is a missing scenario.
    let mixed = dir.join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::write(
        mixed.join("costed.csv"),
        "quality|a,quality|b,cost|a,cost|b\n1,0,0.1,0.2\n",
    )
    .unwrap();
    std::fs::write(mixed.join("free.csv"), "quality|a,quality|b\n0,1\n").unwrap();
    let err = stderr(&quiver(&["replay", "--data", mixed.to_str().unwrap()]));
    assert!(
        err.contains("costed.csv and") && err.contains("free.csv differ"),
        "{err}"
    );
    let err = stderr(&quiver(&[
        "data",
        "generate",
        "--scenario",
        "no-such.toml",
        "--out",
        "unwritten.csv",
    ]));
    assert!(err.contains("--scenario no-such.toml: No such file"), "{err}");

    // A filter or format with no data to apply to is an error, not the built-in scenario.
    for args in [
        &["replay", "--split", "task=x"][..],
        &["replay", "--format", "wide"][..],
    ] {
        let err = stderr(&quiver(args));
        assert!(
            err.contains("required arguments were not provided") && err.contains("--data"),
            "{args:?}: {err}"
        );
    }

    // Counts that would run nothing, or more than memory holds, are the flag's error.
    for (args, flag) in [
        (
            &["replay", "--seeds", "0"][..],
            "--seeds <SEEDS>': 0 is not in 1..=100000",
        ),
        (
            &["replay", "--train-passes", "0"][..],
            "--train-passes <TRAIN_PASSES>': 0 is not in 1..=1000",
        ),
        (
            &["suite", "--seeds", "0"][..],
            "--seeds <SEEDS>': 0 is not in 1..=100000",
        ),
        (
            &["replay", "--pacer-step", "-1"][..],
            "--pacer-step <PACER_STEP>': the pacer's step is -1, outside (0, 10]",
        ),
        (
            &[
                "ope",
                "--data",
                "log.parquet",
                "--policy",
                "random",
                "--bootstrap",
                "1000000000000",
            ][..],
            "--bootstrap <BOOTSTRAP>': 1000000000000 is not in 0..=100000",
        ),
    ] {
        let err = stderr(&quiver(args));
        assert!(err.contains(flag), "{args:?}: {err}");
    }

    let err = stderr(&quiver(&["replay", "--policies", "fixed(gpt-5)"]));
    assert!(
        err.contains("unknown arm `gpt-5` (the arms: gpt-4-1106-preview, "),
        "{err}"
    );

    let truncated = dir.join("truncated.csv");
    std::fs::write(&truncated, "quality|a,quality|b\n1,0\n0.5,\n1,1\n").unwrap();
    let out = stdout(&quiver(&[
        "replay",
        "--data",
        truncated.to_str().unwrap(),
        "--policies",
        "random",
    ]));
    assert!(
        out.contains("2 rows, 2 arms (1 incomplete rows dropped: ")
            && out.contains("truncated.csv row 2: no quality for `b`)"),
        "{out}"
    );

    let err = stderr(&quiver(&[
        "data",
        "convert",
        "--data",
        truncated.to_str().unwrap(),
        "--to",
        "logged",
        "--missing-feedback",
        "1.5",
        "--out",
        dir.join("never.csv").to_str().unwrap(),
    ]));
    assert!(
        err.contains("--missing-feedback must be in [0, 1), not 1.5"),
        "{err}"
    );
    // A logging flag where nothing is logged is refused, not ignored; and a prices file on
    // the table's own path would overwrite it.
    let wide_out = dir.join("never_wide.csv");
    for (flag, value) in [
        ("--missing-feedback", "0.3"),
        ("--logging-policy", "garbage"),
        ("--seed", "3"),
    ] {
        let err = stderr(&convert(&truncated, "wide", &wide_out, &[flag, value]));
        assert!(
            err.contains(&format!("{flag} applies to a wide table converted to a log")),
            "{flag}: {err}"
        );
    }
    let err = stderr(&convert(
        &truncated,
        "wide",
        &wide_out,
        &["--prices-out", wide_out.to_str().unwrap()],
    ));
    assert!(err.contains("the same file as --out"), "{err}");
    assert!(!wide_out.exists());
    let prices_on = |path: &Path| {
        stderr(&convert(
            &truncated,
            "wide",
            &wide_out,
            &["--prices-out", path.to_str().unwrap()],
        ))
    };
    assert!(prices_on(&truncated).contains("the same file as --data"));
    let dotted = prices_on(&dir.join(".").join("never_wide.csv"));
    assert!(dotted.contains("the same file as --out"), "{dotted}");
    let err = stderr(&quiver(&[
        "data",
        "generate",
        "--irt",
        "1000",
        "--rows",
        "1000000",
        "--out",
        "never.csv",
    ]));
    assert!(
        err.contains("above the 100000000 a generated table may hold"),
        "{err}"
    );

    // Structured flags are parsed by clap, so a mistake names the flag and its form.
    for (flag, value, says) in [
        ("--sweep", "budget=x", "KEY=A..B:N"),
        ("--sweep", "latency=0..1:3", "`latency`: sweep budget or w-cost"),
        ("--drift", "gpt-4o", "ARM@STEP:DELTA"),
        ("--drift", "gpt-4o@ten:-0.2", "STEP `ten` must be a whole number"),
        ("--latency-model", "-3", "need MEDIAN_MS > 0 and SIGMA >= 0"),
        ("--latency-model", "500,0.2,9", "two numbers at most"),
        (
            "--sweep",
            "budget=0..0.01:3",
            "budget is 0.0, outside [1e-9, 1000]",
        ),
        ("--sweep", "w-cost=0..10:100000", "1 <= N <= 1000"),
        (
            "--drift",
            "gpt-4o@10:NaN",
            "DELTA `NaN` must be a shift of quality in [-1, 1]",
        ),
        (
            "--drift",
            "gpt-4o@10:-3",
            "DELTA `-3` must be a shift of quality in [-1, 1]",
        ),
        ("--w-cost", "nan", "--w-cost is NaN"),
        (
            "--missing-feedback",
            "2",
            "--missing-feedback must be in [0, 1), not 2",
        ),
    ] {
        let err = stderr(&quiver(&["replay", flag, value]));
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag} ")) && err.contains(says),
            "{err}"
        );
    }
    // Refused as the flags are read, before a log that is not there is looked for.
    for (command, flag, value, says) in [
        ("ope", "--clip", "nan", "--clip must be positive, not NaN"),
        (
            "ope",
            "--switch-tau",
            "0",
            "--switch-tau must be a positive number, not 0",
        ),
        ("ope", "--estimators", "", "unknown estimator ``"),
        ("ope", "--estimators", "ips,snip", "unknown estimator `snip`"),
        ("convert", "--to", "weird", "[possible values: wide, logged]"),
    ] {
        let head: &[&str] = match command {
            "ope" => &["ope", "--policy", "random"],
            _ => &["data", "convert", "--out", "never.csv"],
        };
        let args = [head, &["--data", "nowhere.jsonl", flag, value]].concat();
        let output = quiver(&args);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag} ")) && err.contains(says),
            "{err}"
        );
    }
    let swept = stdout(&quiver(&[
        "replay",
        "--data",
        truncated.to_str().unwrap(),
        "--policies",
        "random",
        "--sweep",
        "w-cost=0..40:3",
        "--latency-model",
        "500,0.2",
    ]));
    for w in ["0 ", "20 ", "40 "] {
        assert!(swept.contains(&format!("random @ w-cost={w}")), "{swept}");
    }

    let missing = dir.join("missing.toml");
    let err = stderr(&quiver(&["serve", "--config", missing.to_str().unwrap()]));
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// `--holdout` trains on a random share of a table's rows and evaluates on the rest, the
/// rows `WideDataset::holdout` draws; `--budget P%` is that share of the best model's mean
/// cost, on the training rows (or the evaluated ones without any), as the suite sets its
/// budgets. The fixture's best model, `mid/v1`, costs $0.0005 on every row, so 25% is
/// $0.000125 whatever the draw.
#[test]
fn a_holdout_and_a_budget_share_run_the_suites_protocol_on_a_table() {
    let dir = scratch("holdout");
    let data = wide_fixture(&dir);
    let path = data.to_str().unwrap();
    let replay = |data: &str, extra: &[&str]| -> serde_json::Value {
        let args = [
            &[
                "replay",
                "--data",
                data,
                "--policies",
                "linucb(alpha=0.1)",
                "--seeds",
                "2",
                "--json",
            ],
            extra,
        ]
        .concat();
        serde_json::from_str(&stdout(&quiver(&args))).expect("json")
    };
    let run = |extra: &[&str]| replay(path, extra);
    let held = run(&["--holdout", "0.3", "--budget", "25%"]);
    assert_eq!(held["dataset"]["rows"], 36);
    assert_eq!(held["dataset"]["train_rows"], 84);
    let budget = held["policies"][0]["budget_usd"].as_f64().unwrap();
    assert!((budget - 0.25 * 0.0005).abs() < 1e-15, "{budget}");
    let (_, evaluated) = load_wide(path, Format::Auto, None)
        .unwrap()
        .holdout(0.3, 0)
        .unwrap();
    for (a, arm) in evaluated.arms.iter().enumerate() {
        let mean = evaluated.quality.column(a).mean().unwrap();
        let single = held["single_arms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["arm"] == arm.as_str())
            .unwrap();
        assert!(
            (single["mean_quality"].as_f64().unwrap() - mean).abs() < 1e-12,
            "{arm}"
        );
    }
    assert_eq!(run(&["--holdout", "0.3", "--budget", "25%"]), held);
    let redrawn = run(&["--holdout", "0.3", "--holdout-seed", "1", "--budget", "25%"]);
    assert_ne!(redrawn["single_arms"], held["single_arms"]);
    let swept = run(&["--holdout", "0.3", "--sweep", "budget=10%..50%:3"]);
    for (policy, percent) in swept["policies"]
        .as_array()
        .unwrap()
        .iter()
        .zip([10.0, 30.0, 50.0])
    {
        assert!(
            policy["policy"]
                .as_str()
                .unwrap()
                .ends_with(&format!(" @ budget={percent}%")),
            "{policy}"
        );
        let usd = policy["budget_usd"].as_f64().unwrap();
        assert!((usd - percent / 100.0 * 0.0005).abs() < 1e-15, "{usd}");
    }
    // Without training rows the share is of the evaluated rows' best model.
    let cold = run(&["--budget", "50%"]);
    assert!((cold["policies"][0]["budget_usd"].as_f64().unwrap() - 0.5 * 0.0005).abs() < 1e-15);

    // With the best model's cost varying by row, the training rows' mean is the base.
    let varying = dir.join("varying.csv");
    let text = std::fs::read_to_string(&data).unwrap();
    let rows: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, line)| line.replace(",0.0005,", &format!(",{},", 0.0001 * (1 + i % 9) as f64)))
        .collect();
    std::fs::write(&varying, rows.join("\n")).unwrap();
    let table = load_wide(varying.to_str().unwrap(), Format::Auto, None).unwrap();
    let (train, evaluated) = table.holdout(0.3, 0).unwrap();
    let [on_train, on_evaluated] = [&train, &evaluated].map(|t| quiver_sim::metrics::best_model(t).1);
    assert!(
        (on_train - on_evaluated).abs() > 1e-6,
        "{on_train} {on_evaluated}"
    );
    let budget_of = |extra: &[&str]| {
        replay(varying.to_str().unwrap(), extra)["policies"][0]["budget_usd"]
            .as_f64()
            .unwrap()
    };
    assert!((budget_of(&["--holdout", "0.3", "--budget", "25%"]) - 0.25 * on_train).abs() < 1e-15);
    let every_row = quiver_sim::metrics::best_model(&table).1;
    assert!((budget_of(&["--budget", "25%"]) - 0.25 * every_row).abs() < 1e-15);

    let unpriced = dir.join("unpriced.csv");
    std::fs::write(&unpriced, "quality|a,quality|b\n1,0\n0,1\n1,1\n").unwrap();
    let err = stderr(&quiver(&[
        "replay",
        "--data",
        unpriced.to_str().unwrap(),
        "--budget",
        "25%",
    ]));
    assert!(
        err.contains("a budget of 25%: ")
            && err.contains("unpriced.csv has no cost columns (`cost|MODEL`), so every call costs nothing"),
        "{err}"
    );
    let err = stderr(&quiver(&[
        "replay",
        "--data",
        unpriced.to_str().unwrap(),
        "--holdout",
        "0.1",
    ]));
    assert!(
        err.contains("holding out 0.1 of the 3 rows of ")
            && err.contains("no rows to train or to evaluate on"),
        "{err}"
    );
    for (flag, value, says) in [
        ("--budget", "0%", "a percentage above 0"),
        ("--budget", "x%", "a percentage above 0"),
        ("--sweep", "budget=0%..50%:3", "a percentage above 0"),
        (
            "--sweep",
            "budget=10%..0.5:3",
            "a budget's ends are both in USD or both in % of the best model's cost",
        ),
        ("--holdout", "1", "between 0 and 1"),
        ("--holdout", "NaN", "between 0 and 1"),
    ] {
        let err = stderr(&quiver(&["replay", "--data", path, flag, value]));
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag} ")) && err.contains(says),
            "{err}"
        );
    }
    // Options that cannot go together, each refused with what it conflicts with.
    for (extra, says) in [
        (
            ["--train", path, "--holdout", "0.3"],
            "'--train <TRAIN>' cannot be used with '--holdout <HOLDOUT>'",
        ),
        (
            ["--train-split", "task=chat", "--holdout", "0.3"],
            "'--train-split <COLUMN=VALUE>' cannot be used with '--holdout <HOLDOUT>'",
        ),
        (
            ["--budget", "0.001", "--sweep", "budget=10%..50%:3"],
            "--budget and --sweep budget=... both set the budget",
        ),
    ] {
        let mut args = vec!["replay", "--data", path];
        args.extend(extra);
        let err = stderr(&quiver(&args));
        assert!(err.contains(says), "{err}");
    }
    let err = stderr(&quiver(&["replay", "--holdout", "0.3"]));
    assert!(err.contains("--data <DATA>"), "{err}");
}

#[test]
fn several_files_are_one_table() {
    let dir = scratch("glob");
    let data = wide_fixture(&dir);
    let text = std::fs::read_to_string(&data).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    let parts = dir.join("parts");
    std::fs::create_dir_all(&parts).unwrap();
    std::fs::write(
        parts.join("a.csv"),
        format!("{header}\n{}\n", rows[..60].join("\n")),
    )
    .unwrap();
    std::fs::write(
        parts.join("b.csv"),
        format!("{header}\n{}\n", rows[60..].join("\n")),
    )
    .unwrap();
    let whole = stdout(&quiver(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--policies",
        "ucb1",
        "--seeds",
        "2",
        "--json",
    ]));
    for pattern in [
        parts.to_str().unwrap().to_string(),
        format!("{}/*.csv", parts.display()),
    ] {
        let split = stdout(&quiver(&[
            "replay",
            "--data",
            &pattern,
            "--policies",
            "ucb1",
            "--seeds",
            "2",
            "--json",
        ]));
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&whole).unwrap(),
            serde_json::from_str(&split).unwrap(),
        );
        assert_eq!(a["policies"], b["policies"]);
        assert_eq!(a["single_arms"], b["single_arms"]);
    }
}

/// Writes the suite's generated table of three models to `table` with `data generate`.
fn generate_irt3(table: &Path, extra: &[&str]) {
    let mut args = vec!["data", "generate", "--irt", "3", "--out", table.to_str().unwrap()];
    args.extend_from_slice(extra);
    stdout(&quiver(&args));
}

/// A generated table's rows that its `split` column puts in `split`, read as replay reads
/// them (prompts run over several lines, as a benchmark's do).
fn split_of(table: &Path, split: &str) -> WideDataset {
    let split = Split {
        column: "split".into(),
        value: split.into(),
    };
    load_wide(table.to_str().unwrap(), Format::Auto, Some(&split)).unwrap()
}

/// A table converted to another file format keeps its `split` column, so that its train
/// and test rows are still the ones the suite and `--split` take.
#[test]
fn a_converted_table_keeps_its_split() {
    let dir = scratch("convert_split");
    let table = dir.join("irt.csv");
    generate_irt3(&table, &[]);
    let without_source = |mut data: WideDataset| {
        data.source.clear();
        data
    };
    for out in ["irt.parquet", "irt.jsonl"] {
        let out = dir.join(out);
        stdout(&convert(&table, "wide", &out, &[]));
        for split in ["train", "test"] {
            let (original, converted) = (split_of(&table, split), split_of(&out, split));
            assert_eq!(original.split.as_ref().map(Vec::len), Some(original.rows()));
            assert_eq!(without_source(original), without_source(converted), "{split}");
        }
    }
}

/// A conversion says which incomplete rows it left out, as a replay does, and refuses a
/// table left with no rows rather than writing an empty file.
#[test]
fn a_conversion_names_the_rows_it_leaves_out() {
    let dir = scratch("convert_incomplete");
    let (table, out) = (dir.join("short.csv"), dir.join("out.csv"));
    std::fs::write(&table, "id,quality|a,quality|b\n1,0.5,0.6\n2,0.7,\n3,0.1,0.2\n").unwrap();
    for to in ["wide", "logged"] {
        let output = convert(&table, to, &out, &[]);
        stdout(&output);
        let note = String::from_utf8_lossy(&output.stderr);
        assert!(
            note.contains("short.csv: 1 incomplete rows left out")
                && note.contains("row 2: no quality for `b`"),
            "{note}"
        );
        let written = std::fs::read_to_string(&out).unwrap();
        assert_eq!(written.lines().count(), 3, "{to}: {written}");
    }
    std::fs::write(&table, "id,quality|a,quality|b\n2,0.7,\n").unwrap();
    for to in ["wide", "logged"] {
        let err = stderr(&convert(&table, to, &out, &[]));
        assert!(err.contains("short.csv: no complete rows to convert"), "{err}");
    }
}

/// Ids, prompts, tasks, splits and model names that look like numbers are text: a CSV
/// table's `007` stays `007` through a conversion, in a log, and for `--split`.
#[test]
fn text_that_looks_like_numbers_stays_as_written() {
    let dir = scratch("numeric_text");
    let table = dir.join("codes.csv");
    std::fs::write(
        &table,
        "id,prompt,task,split,quality|007,quality|b\n007,0012,01,01,1,0\n010,1.50,02,02,0,1\n",
    )
    .unwrap();
    let wide = dir.join("wide.csv");
    stdout(&convert(&table, "wide", &wide, &[]));
    let written = std::fs::read_to_string(&wide).unwrap();
    assert!(
        written.contains("007,01,0012,01,") && written.contains("010,02,1.50,02,"),
        "{written}"
    );
    assert!(
        written.lines().next().unwrap().contains("quality|007"),
        "{written}"
    );
    let log = dir.join("log.jsonl");
    stdout(&convert(&table, "logged", &log, &[]));
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let prompts: Vec<&str> = records.iter().map(|r| r["prompt"].as_str().unwrap()).collect();
    assert!(
        prompts.contains(&"0012") && prompts.contains(&"1.50"),
        "{prompts:?}"
    );
    assert!(records.iter().any(|r| r["decision_id"] == "007"), "{records:?}");
    let replay = quiver(&[
        "replay",
        "--data",
        table.to_str().unwrap(),
        "--split",
        "split=01",
        "--policies",
        "random",
        "--seeds",
        "1",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout(&replay)).unwrap();
    assert_eq!(report["dataset"]["rows"], 1, "{report}");
}

/// The validation suite's tables are files a replay reads: `data generate --irt N` writes
/// the 4,000 prompts with the 70/30 split the suite uses, and a replay of its test split,
/// trained on its train split, reports the hull and the lift.
#[test]
fn suite_tables_generate_to_files_that_replay_reads() {
    let dir = scratch("irt_generate");
    let table = dir.join("irt.csv");
    generate_irt3(&table, &[]);
    assert_eq!(
        (split_of(&table, "train").rows(), split_of(&table, "test").rows()),
        (2800, 1200)
    );
    let summary = stdout(&quiver(&[
        "replay",
        "--data",
        table.to_str().unwrap(),
        "--split",
        "split=test",
        "--train",
        table.to_str().unwrap(),
        "--train-split",
        "split=train",
        "--policies",
        "beta-ts",
        "--seeds",
        "1",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(
        (v["dataset"]["rows"].as_u64(), v["dataset"]["train_rows"].as_u64()),
        (Some(1200), Some(2800))
    );
    let p = &v["policies"][0];
    let lift = p["mean_quality"].as_f64().unwrap() - p["hull_quality_at_cost"].as_f64().unwrap();
    assert!((p["lift_over_hull"].as_f64().unwrap() - lift).abs() < 1e-12);
}

/// `data generate --rows N` writes a longer (or shorter) table of the same models: the same
/// list prices, and the suite's prompts first, split 70/30 over its own rows.
#[test]
fn a_generated_table_of_other_length_extends_the_suites() {
    let dir = scratch("irt_rows");
    let (suite, suite_prices) = (dir.join("suite.csv"), dir.join("suite.json"));
    let (long, long_prices) = (dir.join("long.csv"), dir.join("long.json"));
    generate_irt3(&suite, &["--prices-out", suite_prices.to_str().unwrap()]);
    generate_irt3(
        &long,
        &["--rows", "5000", "--prices-out", long_prices.to_str().unwrap()],
    );
    let (suite_train, mut long_train) = (split_of(&suite, "train"), split_of(&long, "train"));
    assert_eq!((long_train.rows(), split_of(&long, "test").rows()), (3500, 1500));
    // The suite's 2,800 training prompts are the long table's first ones, row for row.
    long_train.retain_rows(|r| r < suite_train.rows());
    assert_eq!(
        (
            &long_train.ids,
            &long_train.prompts,
            &long_train.quality,
            &long_train.cost_usd
        ),
        (
            &suite_train.ids,
            &suite_train.prompts,
            &suite_train.quality,
            &suite_train.cost_usd
        )
    );
    assert_eq!(
        std::fs::read_to_string(&suite_prices).unwrap(),
        std::fs::read_to_string(&long_prices).unwrap()
    );
    let out = dir.join("x.csv");
    let refused = |args: &[&str]| {
        stderr(&quiver(
            &[&["data", "generate", "--out", out.to_str().unwrap()], args].concat(),
        ))
    };
    assert!(refused(&["--irt", "3", "--rows", "5"]).contains("--rows"));
    assert!(refused(&["--rows", "100"]).contains("--irt"));
}

/// `data generate --prices-out` writes the table's list prices in LiteLLM's registry
/// format, and `replay --prices` reads them, warning of the models a file leaves unpriced.
#[test]
fn generated_list_prices_are_a_registry_that_replay_reads() {
    let dir = scratch("irt_prices");
    let (table, prices) = (dir.join("irt.csv"), dir.join("prices.json"));
    generate_irt3(&table, &["--prices-out", prices.to_str().unwrap()]);
    let mut registry: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&prices).unwrap()).unwrap();
    assert_eq!(
        registry.keys().collect::<Vec<_>>(),
        ["family0-size0", "family0-size1", "family0-size2"]
    );
    for entry in registry.values() {
        let price = |field: &str| entry[field].as_f64().unwrap();
        assert!(price("input_cost_per_token") > 0.0, "{entry}");
        assert!((price("output_cost_per_token") / price("input_cost_per_token") - 4.0).abs() < 1e-12);
    }
    let replay = |prices: &Path| {
        quiver(&[
            "replay",
            "--data",
            table.to_str().unwrap(),
            "--split",
            "split=test",
            "--prices",
            prices.to_str().unwrap(),
            "--budget",
            "0.0002",
            "--policies",
            "linucb(alpha=0.1)",
            "--seeds",
            "1",
            "--json",
        ])
    };
    let priced = replay(&prices);
    stdout(&priced);
    assert!(!String::from_utf8_lossy(&priced.stderr).contains("no list price"));
    registry.remove("family0-size1");
    let partial = dir.join("partial.json");
    std::fs::write(&partial, serde_json::to_string(&registry).unwrap()).unwrap();
    let warned = replay(&partial);
    stdout(&warned);
    let log = String::from_utf8_lossy(&warned.stderr);
    assert!(log.contains("no list price for family0-size1;"), "{log}");
    std::fs::write(
        &partial,
        r#"{"family0-size0": {"input_cost_per_token": 1.0, "output_cost_per_token": 1e-6}}"#,
    )
    .unwrap();
    let refused = stderr(&replay(&partial));
    assert!(
        refused.contains("`family0-size0` input_cost_per_token"),
        "{refused}"
    );
}

#[test]
fn priors_fitted_from_a_table_carry_what_each_model_is_good_at() {
    let dir = scratch("priors_fit");
    let data = wide_fixture(&dir);
    let priors = dir.join("priors.json");
    let fit = |extra: &[&str]| {
        let mut args = vec![
            "priors",
            "fit",
            "--data",
            data.to_str().unwrap(),
            "--out",
            priors.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        quiver(&args)
    };
    assert!(fit(&[]).status.success());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&priors).unwrap()).unwrap();
    assert_eq!(v["context"], "hashing(words=40,chars=16,caller=1)");
    assert_eq!(v["arms"].as_object().unwrap().len(), 3);
    // small answers the 80 chat rows of 120 well; 120 rows are under the default cap.
    let small = &v["arms"]["small"];
    assert_eq!(small["rows"], 120.0);
    assert_eq!(small["observations"], 120.0);
    assert!((small["sum"].as_f64().unwrap() - 80.0).abs() < 1e-9);

    // A frozen greedy learner decides from the priors alone: code goes to big:2024 and
    // chat to small or mid/v1, which answers every row well; without priors it cannot
    // tell the models apart and stays on one.
    let frozen = |with_priors: bool| {
        let mut args = vec![
            "replay",
            "--data",
            data.to_str().unwrap(),
            "--policies",
            "linucb(alpha=0)",
            "--frozen",
            "--seeds",
            "1",
            "--json",
        ];
        if with_priors {
            args.extend(["--priors", priors.to_str().unwrap()]);
        }
        let run = quiver(&args);
        let said = String::from_utf8_lossy(&run.stderr);
        assert_eq!(
            said.contains("the learners decide from their cold start alone"),
            !with_priors,
            "{said}"
        );
        let v: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
        v["policies"][0]["mean_quality"].as_f64().unwrap()
    };
    let (with, without) = (frozen(true), frozen(false));
    assert!(with >= 0.95 && with > without + 0.2, "{with} vs {without}");

    // Priors fitted on other contexts (here with the task one-hot) are refused by name.
    assert!(fit(&["--cap", "50", "--task-feature"]).status.success());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&priors).unwrap()).unwrap();
    assert_eq!(v["arms"]["small"]["observations"], 50.0);
    let e = stderr(&quiver(&[
        "replay",
        "--data",
        data.to_str().unwrap(),
        "--priors",
        priors.to_str().unwrap(),
    ]));
    assert!(
        e.contains("fitted on contexts `hashing(words=40,chars=16,caller=3)`")
            && e.contains("hashing(words=40,chars=16,caller=1)"),
        "{e}"
    );
    assert!(stderr(&fit(&["--cap", "0"])).contains("--cap"));

    // From a log, each model learns from the decisions that chose it.
    let log = dir.join("log.csv");
    convert_to_log(&data, "random", &log);
    let fitted = quiver(&[
        "priors",
        "fit",
        "--data",
        log.to_str().unwrap(),
        "--out",
        priors.to_str().unwrap(),
    ]);
    stdout(&fitted);
    // The summary names the cost each model's calls reported.
    let summary = String::from_utf8_lossy(&fitted.stderr);
    for (arm, cost) in [
        ("small", "0.000100"),
        ("mid/v1", "0.000500"),
        ("big:2024", "0.002000"),
    ] {
        let line = summary.lines().find(|l| l.trim_start().starts_with(arm)).unwrap();
        assert!(line.contains(&format!("${cost} per request")), "{summary}");
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&priors).unwrap()).unwrap();
    assert_eq!(v["context"], "hashing(words=40,chars=16,caller=1)");
    let rows: f64 = v["arms"]
        .as_object()
        .unwrap()
        .values()
        .map(|a| a["rows"].as_f64().unwrap())
        .sum();
    assert_eq!(rows, 120.0, "every logged decision, under the model it chose");
    // A log's contexts and costs are its server's: the table-only flags are refused.
    let unused = dir.join("unused.json");
    for (flag, says) in [
        (
            &["--task-feature"][..],
            "--task-feature applies to a table with a task column",
        ),
        (
            &["--prices", data.to_str().unwrap()][..],
            "--prices applies to a table",
        ),
    ] {
        let mut args = vec![
            "priors",
            "fit",
            "--data",
            log.to_str().unwrap(),
            "--out",
            unused.to_str().unwrap(),
        ];
        args.extend_from_slice(flag);
        let e = stderr(&quiver(&args));
        assert!(e.contains(says), "{e}");
    }
}

/// `quiver data convert --prices-out` keeps a table's list prices, which the shapes have no
/// place for: a RouteLLM table converted to the wide shape and replayed with them decides
/// as the table itself does. A table without list prices is refused by name.
#[test]
fn a_converted_table_keeps_its_list_prices() {
    let dir = scratch("convert_prices");
    let table = dir.join("mmlu_fixture.csv");
    let mut text = String::from("prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\n");
    for i in 0..90 {
        let (weak, strong) = if i % 3 == 0 {
            ("False", "True")
        } else {
            ("True", "True")
        };
        text.push_str(&format!("\"Question {i}: which answer?\",{weak},{strong}\n"));
    }
    std::fs::write(&table, text).unwrap();
    let (wide, prices) = (dir.join("converted.csv"), dir.join("prices.json"));
    stdout(&convert(
        &table,
        "wide",
        &wide,
        &["--prices-out", prices.to_str().unwrap()],
    ));
    let registry: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&prices).unwrap()).unwrap();
    assert_eq!(registry["gpt-4-1106-preview"]["input_cost_per_token"], 10e-6);
    assert_eq!(
        registry["mistralai/Mixtral-8x7B-Instruct-v0.1"]["output_cost_per_token"],
        0.6e-6
    );

    let replayed = |data: &Path, extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "replay",
            "--data",
            data.to_str().unwrap(),
            "--policies",
            "linucb(alpha=0.1)",
            "--budget",
            "0.0005",
            "--seeds",
            "2",
            "--json",
        ];
        args.extend_from_slice(extra);
        let summary: serde_json::Value = serde_json::from_str(&stdout(&quiver(&args))).unwrap();
        summary["policies"].clone()
    };
    let original = replayed(&table, &["--format", "routellm"]);
    assert_eq!(original, replayed(&wide, &["--prices", prices.to_str().unwrap()]));
    assert_ne!(
        original,
        replayed(&wide, &[]),
        "unpriced, the models' costs are learned call by call"
    );
    // So do the priors fitted on it: with the prices, those of the table itself.
    let fitted = |data: &Path, extra: &[&str]| -> serde_json::Value {
        let out = dir.join("fitted.json");
        let mut args = vec![
            "priors",
            "fit",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        stdout(&quiver(&args));
        let mut priors: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        priors.as_object_mut().unwrap().remove("source");
        priors
    };
    let original = fitted(&table, &["--format", "routellm"]);
    assert!(original["arms"]["gpt-4-1106-preview"]["answer_correction"].is_object());
    assert_eq!(original, fitted(&wide, &["--prices", prices.to_str().unwrap()]));
    assert_ne!(original, fitted(&wide, &[]));

    let err = stderr(&quiver(&[
        "data",
        "convert",
        "--data",
        wide_fixture(&dir).to_str().unwrap(),
        "--to",
        "wide",
        "--out",
        dir.join("again.csv").to_str().unwrap(),
        "--prices-out",
        dir.join("none.json").to_str().unwrap(),
    ]));
    assert!(
        err.contains("--prices-out: ") && err.contains("wide.csv carries no list prices"),
        "{err}"
    );
}

/// `quiver suite --against` compares a run with an earlier `--json` run case by case, and
/// `--from` reads a run instead of running the suite; a file that is not such a run, or
/// shares no case, is refused by name.
#[test]
fn a_suite_run_compares_with_an_earlier_one() {
    let dir = scratch("suite_against");
    let case = |table: &str, candidate: &str, lift: f64| {
        serde_json::json!({
            "table": table, "cold": table.contains("+cold"),
            "feedback_delay": if table.contains("+late") { 200 } else { 0 },
            "budget_share": 0.25, "candidate": candidate, "quality": 0.6 + lift,
            "spend_vs_budget": 0.99, "feasible": true, "hull": 0.6, "lift": lift,
            "lift_at_budget": lift, "full_information_lift": null
        })
    };
    let write = |name: &str, cases: serde_json::Value| {
        let path = dir.join(name);
        std::fs::write(&path, cases.to_string()).unwrap();
        path
    };
    let base = write(
        "base.json",
        serde_json::json!([
            case("t-fold0", "linucb", 0.010),
            case("t-fold1", "linucb", 0.030),
            case("t-fold0+cold", "linucb", -0.040),
            case("w", "linucb", 0.2),
            case("w+cold", "linucb", 0.2),
        ]),
    );
    let new = write(
        "new.json",
        serde_json::json!([
            case("t-fold0", "linucb", 0.015),
            case("t-fold1", "linucb", 0.045),
            case("t-fold0+cold", "linucb", -0.010),
            case("u", "linucb", 0.5),
            // No number to compare or rank: left out of the means, the worst spend and
            // the comparison, as the report leaves it out.
            case("w", "linucb", 0.0),
        ]),
    );
    let mut cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&new).unwrap()).unwrap();
    cases[4]["lift"] = serde_json::Value::Null;
    cases[4]["spend_vs_budget"] = serde_json::Value::Null;
    let new = write("new.json", cases);
    let (new_arg, base_arg) = (new.to_str().unwrap(), base.to_str().unwrap());
    let out = stdout(&quiver(&["suite", "--from", new_arg, "--against", base_arg]));
    // Figures over no case (no late cases, no full-information lifts here) are n/a.
    let summary = out
        .lines()
        .find(|l| l.starts_with("linucb") && l.contains('%'))
        .unwrap_or_else(|| panic!("no summary line: {out}"));
    assert!(
        summary.contains("n/a") && !summary.contains("NaN") && !summary.contains("inf"),
        "{summary}"
    );
    let row = |set: &str| -> Vec<String> {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(set) && l.contains("linucb") && !l.contains('%'))
            .unwrap_or_else(|| panic!("no row {set}: {out}"));
        line.split_whitespace().skip(2).map(str::to_owned).collect()
    };
    // Folds together: the base's mean is 0.02, this run's 0.03.
    assert_eq!(row("t"), ["2", "+0.0200", "+0.0300", "+0.0100"], "{out}");
    assert_eq!(row("t+cold"), ["1", "-0.0400", "-0.0100", "+0.0300"], "{out}");
    assert_eq!(row("trained"), ["2", "+0.0200", "+0.0300", "+0.0100"], "{out}");
    assert_eq!(row("all"), ["3", "+0.0000", "+0.0167", "+0.0167"], "{out}");
    assert!(out.contains("(1 cases of this run are not in"), "{out}");
    assert!(
        out.contains("base.json are not in this run and are left out)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("(1 cases of {base_arg} are not in this run")),
        "{out}"
    );
    assert!(
        out.contains("(1 cases of both whose lift is no number in one or both are left out)"),
        "{out}"
    );
    // The report itself reads from the file as from a run, and `--json` writes it back.
    assert!(
        out.lines().any(|l| l.starts_with("u ") && l.contains("+0.5000")),
        "{out}"
    );
    // Its summary: the trained cases' mean and worst lift (u counts), the cold cases' mean.
    let summary: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("linucb "))
        .unwrap_or_else(|| panic!("no summary: {out}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        [summary[1], summary[2], summary[5]],
        ["+0.1867", "+0.0150", "-0.0100"],
        "{out}"
    );
    let again: serde_json::Value =
        serde_json::from_str(&stdout(&quiver(&["suite", "--from", new_arg, "--json"]))).unwrap();
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&new).unwrap()).unwrap();
    assert_eq!(again, written);

    let missing = dir.join("missing.json");
    let err = stderr(&quiver(&[
        "suite",
        "--from",
        new_arg,
        "--against",
        missing.to_str().unwrap(),
    ]));
    assert!(err.contains("reading ") && err.contains("missing.json"), "{err}");
    let replayed = write("replay.json", serde_json::json!({"policies": []}));
    let err = stderr(&quiver(&[
        "suite",
        "--from",
        new_arg,
        "--against",
        replayed.to_str().unwrap(),
    ]));
    assert!(
        err.contains("replay.json: not the output of `quiver suite --json`"),
        "{err}"
    );
    let other = write("other.json", serde_json::json!([case("v", "lints", 0.0)]));
    let failed = quiver(&["suite", "--from", new_arg, "--against", other.to_str().unwrap()]);
    let err = stderr(&failed);
    assert!(
        err.contains("no case of this run is in") && err.contains("other.json"),
        "{err}"
    );
    // A comparison that fails prints no report for a script to take as the run's.
    assert!(
        failed.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&failed.stdout)
    );
    let empty = write("empty.json", serde_json::json!([]));
    let err = stderr(&quiver(&["suite", "--from", empty.to_str().unwrap()]));
    assert!(err.contains("empty.json: no case in it"), "{err}");
    // A setting the training does not use is refused, not run as the default under
    // another name; a bad candidate names its flag.
    for (args, said) in [
        (
            &["--train-passes", "5"][..],
            "--train-passes applies to --train-feedback bandit",
        ),
        (
            &["--train-feedback", "bandit", "--prior-cap", "50"][..],
            "--prior-cap applies to --train-feedback full",
        ),
        (&["--candidates", "foo"][..], "--candidates: "),
    ] {
        let err = stderr(&quiver(&[&["suite"][..], args].concat()));
        assert!(err.contains(said), "{args:?}: {err}");
    }
    // A figure that was no number is written `null` and read back as one, so that a run
    // reads back whatever it wrote.
    let mut nothing_spent = case("x", "linucb", 0.0);
    nothing_spent["spend_vs_budget"] = serde_json::Value::Null;
    nothing_spent["lift"] = serde_json::Value::Null;
    let unpriced = write("unpriced.json", serde_json::json!([nothing_spent]));
    let again: serde_json::Value = serde_json::from_str(&stdout(&quiver(&[
        "suite",
        "--from",
        unpriced.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(again[0]["spend_vs_budget"], serde_json::Value::Null);
    assert_eq!(again[0]["lift"], serde_json::Value::Null);
    // A case twice is no run: compared with itself it would not compare.
    let twice = write(
        "twice.json",
        serde_json::json!([case("t", "linucb", 0.1), case("t", "linucb", 0.0)]),
    );
    let err = stderr(&quiver(&["suite", "--from", twice.to_str().unwrap()]));
    assert!(
        err.contains("twice.json: table t, budget 0.25, candidate linucb is there twice"),
        "{err}"
    );
    let err = stderr(&quiver(&["suite", "--from", new_arg, "--seeds", "3"]));
    assert!(err.contains("--seeds"), "{err}");
    let err = stderr(&quiver(&[
        "suite",
        "--from",
        new_arg,
        "--against",
        base_arg,
        "--json",
    ]));
    assert!(err.contains("--json") && err.contains("--against"), "{err}");
}
