//! Lists in messages: a user with 300 missing files needs the first few and a count, not a
//! screenful.

/// The first `most` items joined by `sep`, and how many more there are:
/// `first_few(["A", "B", "C"], 2, ", ")` is "A, B, and 1 more".
pub fn first_few<S: AsRef<str>>(
    items: impl IntoIterator<Item = S>,
    most: usize,
    sep: &str,
) -> String {
    let items: Vec<S> = items.into_iter().collect();
    let shown: Vec<&str> = items.iter().take(most).map(AsRef::as_ref).collect();
    let mut s = shown.join(sep);
    if items.len() > most {
        s.push_str(&format!("{sep}and {} more", items.len() - most));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::first_few;

    #[test]
    fn the_first_few_and_a_count() {
        assert_eq!(first_few(["A", "B", "C"], 2, ", "), "A, B, and 1 more");
        assert_eq!(first_few(["A", "B"], 2, "; "), "A; B");
        assert_eq!(first_few(Vec::<String>::new(), 3, ", "), "");
    }
}
