//! "Did you mean": the known name closest to a misspelt one, for load errors.
//!
//! A suggestion is offered only when it is close (a few edits for the name's length, or the same
//! name in another case), so that an unrelated name is never proposed.

/// The known name closest to `word`, if one is close enough to be a likely misspelling.
pub(crate) fn closest<'a, I>(word: &str, known: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let lower = word.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for k in known {
        if k == word {
            continue;
        }
        let d = strsim::damerau_levenshtein(&lower, &k.to_lowercase());
        let len = word.chars().count().min(k.chars().count());
        // one edit for short names, about one in three for longer ones
        let limit = (len / 3).max(1);
        if d <= limit && d < len && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| k)
}

/// `; did you mean `NAME`?` when a known name is close to `word`, else nothing.
pub(crate) fn did_you_mean<S: AsRef<str>>(word: &str, known: &[S]) -> String {
    match closest(word, known.iter().map(AsRef::as_ref)) {
        Some(k) => format!("; did you mean `{k}`?"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        let phases = ["Pending", "Running", "Done"];
        assert_eq!(closest("Runing", phases), Some("Running"));
        assert_eq!(closest("running", phases), Some("Running"));
        assert_eq!(closest("Pednign", phases), Some("Pending"));
        assert_eq!(closest("Finished", phases), None);
        assert_eq!(closest("Dne", phases), Some("Done"));
        // a short name is not "close" to everything
        assert_eq!(closest("x", ["y", "z"]), None);
        assert_eq!(closest("stauts", ["status", "state"]), Some("status"));
        assert_eq!(
            did_you_mean("wen", &["name", "to", "when"]),
            "; did you mean `when`?"
        );
        assert_eq!(did_you_mean("zzz", &["name"]), "");
    }
}
