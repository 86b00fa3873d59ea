//! Where a batch's new identity links point, the same on both stores.
//!
//! Stored links always name a final id (one not linked on), so readers look
//! an id up once whatever the chain: a new link to an id linked on goes
//! where that one goes, and (each store's write) the links to an id that is
//! linked now move to its target. A link that would lead back to its own id
//! (a loop: `a` to `b` when `b` goes to `a`) is not made, as an id cannot
//! be its own person's alias.

use std::collections::HashMap;

/// How many links a new one is followed through, at most: stored links
/// name a final id and a batch's own move along as they are made, so this
/// only bounds a chain stored unresolved (by an earlier version).
const MAX_HOPS: usize = 64;

/// The final id of each new link of one project: `new` are (linked id,
/// user) in the order they were made, each id linked for the first time;
/// `stored` maps ids already linked to their (final) target. Links left out
/// of the answer would make a loop and are not made.
pub fn resolve<'n: 'v, 'v>(
    new: &[(&'n str, &'n str)],
    stored: &'v HashMap<String, String>,
) -> HashMap<&'n str, &'v str> {
    let mut made: HashMap<&'n str, &'v str> = HashMap::new();
    // Which of `made` point at an id, so a link to it moves them at once.
    let mut pointing: HashMap<&'v str, Vec<&'n str>> = HashMap::new();
    for &(from, to) in new {
        let mut end: &'v str = to;
        let mut hops = 0;
        while let Some(next) = made.get(end).copied().or_else(|| stored.get(end).map(String::as_str)) {
            // An id linked to itself (a loop undone on ClickHouse) is final.
            if end == from || next == end || hops == MAX_HOPS {
                break;
            }
            (end, hops) = (next, hops + 1);
        }
        if end == from {
            continue;
        }
        // Links of this batch to the id linked now move along.
        let moved = pointing.remove(from).unwrap_or_default();
        for id in &moved {
            made.insert(id, end);
        }
        let at_end = pointing.entry(end).or_default();
        at_end.extend(moved);
        at_end.push(from);
        made.insert(from, end);
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(links: &[(&str, &str)]) -> HashMap<String, String> {
        links.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn sorted<'a>(made: HashMap<&'a str, &'a str>) -> Vec<(&'a str, &'a str)> {
        let mut v: Vec<_> = made.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn links_name_the_end_of_their_chain() {
        let none = stored(&[]);
        // Either order of a chain within a batch.
        assert_eq!(sorted(resolve(&[("a", "b"), ("b", "c")], &none)), [("a", "c"), ("b", "c")]);
        assert_eq!(sorted(resolve(&[("b", "c"), ("a", "b")], &none)), [("a", "c"), ("b", "c")]);
        // Through a stored link.
        let known = stored(&[("b", "c")]);
        assert_eq!(sorted(resolve(&[("a", "b")], &known)), [("a", "c")]);
        // A long chain in one batch.
        let ids: Vec<String> = (0..=12).map(|i| format!("n{i:02}")).collect();
        let chain: Vec<(&str, &str)> = ids.windows(2).map(|w| (w[0].as_str(), w[1].as_str())).collect();
        assert!(resolve(&chain, &none).values().all(|&end| end == "n12"));
    }

    #[test]
    fn a_link_that_would_make_a_loop_is_not_made() {
        let none = stored(&[]);
        assert_eq!(sorted(resolve(&[("a", "b"), ("b", "a")], &none)), [("a", "b")]);
        let known = stored(&[("a", "b")]);
        assert!(resolve(&[("b", "a")], &known).is_empty());
        assert_eq!(sorted(resolve(&[("z", "a")], &known)), [("z", "b")]);
        assert_eq!(sorted(resolve(&[("a", "b"), ("b", "c"), ("c", "a")], &none)), [("a", "c"), ("b", "c")]);
    }
}
