//! Regular expressions as the stores' RE2 engines read them.
//!
//! Filters with `regex` run inside ClickHouse and DuckDB (RE2), and on
//! people's traits here (Rust's `regex`). The two syntaxes mostly agree, but
//! Rust's accepts some that RE2 refuses at query time: `(?<name>…)` groups,
//! repeat counts over 1,000, a repetition of a repetition (`a**`), the flags
//! `x`, `u` and `R`, and class set operations (`[a&&b]`). Those are refused
//! here with the field named, rather than failing inside the store. A dot
//! matches a newline everywhere, as ClickHouse's `match` has it.

use crate::AnalyticsError;
use regex_syntax::ast::{self, Ast, Flag, FlagsItemKind, GroupKind, RepetitionKind, RepetitionRange};

/// RE2's largest repeat count.
const MAX_REPEAT: u32 = 1000;

/// Compiles `pattern`, found at `at`, once RE2 would take it.
pub fn compile(pattern: &str, at: &str) -> Result<regex::Regex, AnalyticsError> {
    let invalid = |why: String| AnalyticsError::invalid(at, format!("`{at}` is not a valid regular expression: {why}"));
    // ClickHouse reads a pattern's literal text up to a NUL, as C strings
    // end: refused on both stores so that they answer alike.
    if pattern.contains('\0') {
        return Err(invalid("it holds a NUL character".into()));
    }
    let parsed = ast::parse::Parser::new().parse(pattern).map_err(|e| invalid(e.to_string()))?;
    ast::visit(&parsed, Re2Only).map_err(invalid)?;
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dot_matches_new_line(true)
        .build()
        .map_err(|e| invalid(e.to_string()))
}

/// Finds the first construct RE2 refuses.
struct Re2Only;

impl ast::Visitor for Re2Only {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, node: &Ast) -> Result<(), String> {
        match node {
            Ast::Repetition(rep) => {
                if let RepetitionKind::Range(range) = &rep.op.kind {
                    let (RepetitionRange::Exactly(n) | RepetitionRange::AtLeast(n) | RepetitionRange::Bounded(_, n)) =
                        range;
                    if *n > MAX_REPEAT {
                        return Err(format!("repeat counts go up to {MAX_REPEAT}"));
                    }
                }
                if matches!(*rep.ast, Ast::Repetition(_)) {
                    return Err("a repetition cannot repeat another (`a**`); group it first: `(?:a*)*`".into());
                }
                Ok(())
            }
            Ast::Group(group) => match &group.kind {
                GroupKind::CaptureName { starts_with_p: false, name } => {
                    Err(format!("write a named group as `(?P<{}>…)`", name.name))
                }
                GroupKind::NonCapturing(flags) => known_flags(flags),
                _ => Ok(()),
            },
            Ast::Flags(set) => known_flags(&set.flags),
            _ => Ok(()),
        }
    }

    fn visit_class_set_binary_op_pre(&mut self, _: &ast::ClassSetBinaryOp) -> Result<(), String> {
        Err("class set operations (`&&`, `--`, `~~`) are not supported".into())
    }
}

fn known_flags(flags: &ast::Flags) -> Result<(), String> {
    for item in &flags.items {
        if let FlagsItemKind::Flag(Flag::Unicode | Flag::CRLF | Flag::IgnoreWhitespace) = item.kind {
            return Err("the flags are i, m, s and U".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_re2_refuses() {
        for pattern in ["(?<n>s)", "x{1001}", "x{2,1001}", "a**", "a+*", "(?x)a b", "(?u:a)", "[a-z&&b]", "(a"] {
            let err = compile(pattern, "filters[0].value").unwrap_err();
            assert!(err.to_string().contains("filters[0].value"), "{pattern}: {err}");
        }
        for pattern in ["(?P<n>s)", "x{1000}", "a*?", "(?:a*)*", "(?i)pro", "(?is:a.b)", "[a-z]", "^\\d+$"] {
            assert!(compile(pattern, "f").is_ok(), "{pattern}");
        }
    }

    #[test]
    fn a_dot_matches_a_newline() {
        assert!(compile("line.break", "f").unwrap().is_match("line\nbreak"));
    }
}
