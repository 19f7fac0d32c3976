//! RouterBench (Hu et al. 2024, arXiv:2403.12031) CSV exports.
//!
//! Columns: an unnamed index, `sample_id`, `prompt` (a Python list literal of strings),
//! `eval_name`, one quality column per model named by the model (`0.0`/`1.0`/empty),
//! `<model>|model_response`, `<model>|total_cost` (USD), `oracle_model_to_route_to`.
//! Arms are the models with a `|total_cost` column; `eval_name` becomes the task.

use quiver_bandit::limits;

use super::wide::{optional_in_range, optional_texts, read_wide_tables, WideColumns};
use super::{Dataset, DatasetReader};
use crate::error::Result;
use crate::source::Table;

/// Reader for RouterBench tables.
pub struct RouterBenchReader;

const COST_SUFFIX: &str = "|total_cost";

impl RouterBenchReader {
    fn read_table(table: &Table) -> Result<super::WideDataset> {
        let arms: Vec<String> = table
            .columns()
            .iter()
            .filter_map(|c| c.strip_suffix(COST_SUFFIX).map(str::to_string))
            .collect();
        let prompts = table
            .texts("prompt", "RouterBench tables have a prompt column")?
            .into_iter()
            .map(|p| python_list_text(&p.unwrap_or_default()))
            .collect();
        let columns = WideColumns {
            quality: arms
                .iter()
                .map(|a| optional_in_range(table, a, 0.0, 1.0))
                .collect::<Result<_>>()?,
            cost_usd: Some(
                arms.iter()
                    .map(|a| optional_in_range(table, &format!("{a}{COST_SUFFIX}"), 0.0, limits::COST_USD.hi))
                    .collect::<Result<_>>()?,
            ),
            latency_ms: None,
            split: None,
            ids: table
                .texts("sample_id", "RouterBench tables have a sample_id column")?
                .into_iter()
                .map(|v| v.unwrap_or_default())
                .collect(),
            prompts: Some(prompts),
            tasks: optional_texts(table, "eval_name")?,
            feature_names: Vec::new(),
            features: ndarray::Array2::zeros((table.rows(), 0)),
            arms,
        };
        Ok(columns.into_dataset(table))
    }
}

impl DatasetReader for RouterBenchReader {
    fn detects(&self, columns: &[String]) -> bool {
        columns.iter().any(|c| c == "eval_name") && columns.iter().any(|c| c.ends_with(COST_SUFFIX))
    }

    fn read(&self, source: &str, tables: &[Table]) -> Result<Dataset> {
        read_wide_tables(source, tables, Self::read_table)
    }
}

/// The text of a Python list literal of strings (`['a\nb', "c"]`), its items joined by
/// newlines. Text that is not such a literal is returned as is.
pub fn python_list_text(literal: &str) -> String {
    let trimmed = literal.trim();
    let Some(inner) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return literal.to_string();
    };
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let Some(quote) = chars.next() else { break };
        if quote != '\'' && quote != '"' {
            return literal.to_string();
        }
        let mut item = String::new();
        let mut closed = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escape) => unescape(escape, &mut chars, &mut item),
                    None => break,
                },
                c if c == quote => {
                    closed = true;
                    break;
                }
                c => item.push(c),
            }
        }
        if !closed {
            return literal.to_string();
        }
        items.push(item);
    }
    items.join("\n")
}

/// Appends to `item` what the escape `\{escape}` of a Python string literal stands for:
/// those `repr` writes, taking the code point's digits of `\x`, `\u` and `\U` from
/// `rest`. Any other escape, or a code point that is no character, stays as written.
fn unescape(escape: char, rest: &mut std::iter::Peekable<std::str::Chars<'_>>, item: &mut String) {
    let simple = match escape {
        'n' => Some('\n'),
        't' => Some('\t'),
        'r' => Some('\r'),
        '\\' | '\'' | '"' => Some(escape),
        _ => None,
    };
    if let Some(c) = simple {
        item.push(c);
        return;
    }
    let digits = match escape {
        'x' => 2,
        'u' => 4,
        'U' => 8,
        _ => 0,
    };
    let mut hex = String::new();
    while hex.len() < digits && rest.peek().is_some_and(char::is_ascii_hexdigit) {
        hex.extend(rest.next());
    }
    let code_point = if digits > 0 && hex.len() == digits {
        u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)
    } else {
        None
    };
    match code_point {
        Some(c) => item.push(c),
        None => {
            item.push('\\');
            item.push(escape);
            item.push_str(&hex);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::python_list_text;

    #[test]
    fn python_list_literals_become_text() {
        assert_eq!(python_list_text("['Write a function.']"), "Write a function.");
        assert_eq!(
            python_list_text(r#"['it\'s', "say \"hi\"\nnow"]"#),
            "it's\nsay \"hi\"\nnow"
        );
        assert_eq!(python_list_text("plain prompt"), "plain prompt");
        // What `repr` writes for characters it does not print, as Python reads it back.
        assert_eq!(
            python_list_text(r"['NaNO3 \x02+ Ag \u00e9\U0001f600 a\\b \q \ud800 \x2']"),
            "NaNO3 \u{2}+ Ag \u{e9}\u{1f600} a\\b \\q \\ud800 \\x2"
        );
        // An escaped backslash before `x` is a backslash, then the letter.
        assert_eq!(python_list_text(r"['a\\x41']"), "a\\x41");
        assert_eq!(python_list_text("['unterminated"), "['unterminated");
    }
}
