//! What a template's text names, found from its tokens: the filters and tests it calls, and
//! where it first reads a variable. The loader uses it to report an unknown filter or test, or
//! an unknown variable inside a template file, at its line and column, before anything renders.

use minijinja::machinery::{Token, WhitespaceConfig, tokenize};
use minijinja::syntax::SyntaxConfig;

/// A name in a template's text, with its place (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// `filter` or `test`.
    pub what: &'static str,
    /// The name.
    pub name: String,
    /// Line inside the template.
    pub line: usize,
    /// Column inside the template.
    pub column: usize,
}

fn tokens(source: &str) -> Vec<(Token<'_>, usize, usize)> {
    tokenize(source, false, SyntaxConfig, WhitespaceConfig::default())
        .map_while(Result::ok)
        .map(|(t, s)| (t, s.start_line as usize, s.start_col as usize + 1))
        .collect()
}

/// Every filter (`x | name`, `{% filter name %}`) and test (`x is name`, `x is not name`)
/// the text calls, in order.
pub fn calls(source: &str) -> Vec<Named> {
    let toks = tokens(source);
    let mut out = Vec::new();
    for (i, (t, _, _)) in toks.iter().enumerate() {
        let (what, mut j) = match t {
            Token::Pipe => ("filter", i + 1),
            Token::Ident("filter") if i > 0 && matches!(toks[i - 1].0, Token::BlockStart) => {
                ("filter", i + 1)
            }
            Token::Ident("is") => ("test", i + 1),
            _ => continue,
        };
        if what == "test" && matches!(toks.get(j), Some((Token::Ident("not"), _, _))) {
            j += 1;
        }
        if let Some((Token::Ident(name), line, column)) = toks.get(j) {
            out.push(Named {
                what,
                name: (*name).to_string(),
                line: *line,
                column: *column,
            });
        }
    }
    out
}

/// Where the text first reads variable `name` (not as an attribute, filter or test name).
pub fn first_read(source: &str, name: &str) -> Option<(usize, usize)> {
    let toks = tokens(source);
    toks.iter().enumerate().find_map(|(i, (t, line, column))| {
        let Token::Ident(n) = t else { return None };
        let after_name_position = i > 0
            && matches!(
                toks[i - 1].0,
                Token::Dot
                    | Token::Pipe
                    | Token::Ident("is")
                    | Token::Ident("not")
                    | Token::Ident("filter")
            );
        (*n == name && !after_name_position).then_some((*line, *column))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_tests_are_found_with_their_place() {
        let src = "a\n{{ x | upper | nope(1) }}{% if y is not defined %}{% endif %}\n{% filter lower %}z{% endfilter %}";
        let found = calls(src);
        let found: Vec<(&str, &str, usize, usize)> = found
            .iter()
            .map(|n| (n.what, n.name.as_str(), n.line, n.column))
            .collect();
        assert_eq!(
            found,
            vec![
                ("filter", "upper", 2, 8),
                ("filter", "nope", 2, 16),
                ("test", "defined", 2, 41),
                ("filter", "lower", 3, 11),
            ]
        );
    }

    #[test]
    fn the_first_read_of_a_variable_skips_attributes() {
        let src = "x: {{ a.spec }}\ny: {{ spec.x }}";
        assert_eq!(first_read(src, "spec"), Some((2, 7)));
        assert_eq!(first_read(src, "missing"), None);
    }
}
