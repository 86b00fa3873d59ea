//! Identity links on ClickHouse: an insert-only table read as each
//! anonymous id's first link ([`CLICKHOUSE_FIRST_LINK`]). A write
//! stores its links so that each names a final id, as on DuckDB, then
//! repairs the chains through the ids it linked: another writer (a second
//! collector) may have linked ids of the same chains at the same moment,
//! each looking the links up before the other's were stored.

use super::mutations::in_bound_set;
use super::write::bounded_chunks;
use crate::{StoreError, CLICKHOUSE_FIRST_LINK};
use clickhouse::Row;
use leanloop_core::UserUpdate;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};

/// How many links a repair follows from an id, at most: stored links name
/// a final id but for those a race left, so chains are short.
const REPAIR_HOPS: usize = 16;

/// When a link is written, in ms, strictly increasing in this process (a
/// link moved along a chain is dated before its first row instead): the
/// first link stored wins, as on DuckDB (where a later link of the same
/// anonymous id is ignored), whatever the events' own times. A link sent
/// again (a retry, a replay) is written later and does not displace it.
fn link_time() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = chrono::Utc::now().timestamp_millis();
    let previous = LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1)));
    now.max(previous.unwrap_or(0) + 1)
}

#[derive(Row, Serialize)]
struct IdentityRow<'a> {
    project_id: i64,
    anonymous_id: &'a str,
    user_id: &'a str,
    linked_at_ms: i64,
}

/// Links read a bounded chunk of `ids` at a time, by `query` of a chunk,
/// each row an id, the user its first link names, and when.
async fn links_by_chunks(
    ids: &[&str],
    query: impl Fn(&[&str]) -> clickhouse::query::Query,
) -> Result<HashMap<String, (String, i64)>, StoreError> {
    let mut links = HashMap::new();
    for chunk in bounded_chunks(ids) {
        let found: Vec<(String, String, i64)> = query(chunk).fetch_all().await?;
        links.extend(found.into_iter().map(|(id, to, at)| (id, (to, at))));
    }
    Ok(links)
}

/// The first link stored of each of `ids`: the user it names, and when.
/// An id linked to itself (a loop a repair undid) names itself.
async fn first_links_of(
    client: &clickhouse::Client,
    project_id: i64,
    ids: &[&str],
) -> Result<HashMap<String, (String, i64)>, StoreError> {
    links_by_chunks(ids, |chunk| {
        client
            .query(&format!(
                "SELECT anonymous_id, {CLICKHOUSE_FIRST_LINK}, min(linked_at_ms) FROM identities
                 WHERE project_id = ? AND {} GROUP BY anonymous_id",
                in_bound_set("anonymous_id")
            ))
            .bind(project_id)
            .bind(chunk)
    })
    .await
}

/// The first link stored of each of `ids`: the user it names.
pub(super) async fn stored_links_of(
    client: &clickhouse::Client,
    project_id: i64,
    ids: &[&str],
) -> Result<HashMap<String, String>, StoreError> {
    let links = first_links_of(client, project_id, ids).await?;
    Ok(links.into_iter().map(|(id, (to, _))| (id, to)).collect())
}

/// The ids whose first link names one of `ids`, with that link and when
/// it was made.
async fn links_to(
    client: &clickhouse::Client,
    project_id: i64,
    ids: &[&str],
) -> Result<HashMap<String, (String, i64)>, StoreError> {
    links_by_chunks(ids, |chunk| {
        client
            .query(&format!(
                "SELECT anonymous_id, {CLICKHOUSE_FIRST_LINK}, min(linked_at_ms) FROM identities
                 WHERE project_id = ? AND anonymous_id IN
                     (SELECT anonymous_id FROM identities WHERE project_id = ? AND {})
                 GROUP BY anonymous_id HAVING {}",
                in_bound_set("user_id"),
                in_bound_set(CLICKHOUSE_FIRST_LINK)
            ))
            .bind(project_id)
            .bind(project_id)
            .bind(chunk)
            .bind(chunk)
    })
    .await
}

async fn insert(client: &clickhouse::Client, rows: &[IdentityRow<'_>]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = client.insert::<IdentityRow<'static>>("identities").await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}

/// Stores the links of `updates` so that each names a final id, as the
/// DuckDB store does (one lookup is then a whole chain: an identified user
/// given an alias): a new link (`new_links`, its id linked for the first
/// time) to an id linked on goes where that one goes, and (`repair`) the
/// links to an id now linked on move to its target. Other links are stored
/// as they come; the first one made wins. `in_doubt`: an earlier try of
/// `updates` may have stored their links and stopped before their repair.
pub(super) async fn links(
    client: &clickhouse::Client,
    updates: &[UserUpdate],
    new_links: &[(i64, &str, &str)],
    stored_links: &HashMap<i64, HashMap<String, String>>,
    in_doubt: bool,
) -> Result<(), StoreError> {
    let mut target: HashMap<(i64, &str), String> = HashMap::new();
    // New links that would make a loop, not made.
    let mut looping: HashSet<(i64, &str)> = HashSet::new();
    let mut new_froms: HashMap<i64, Vec<&str>> = HashMap::new();
    for &(project_id, from, _) in new_links {
        new_froms.entry(project_id).or_default().push(from);
    }
    for (&project_id, froms) in &new_froms {
        let new: Vec<(&str, &str)> =
            new_links.iter().filter(|(p, ..)| *p == project_id).map(|&(_, from, to)| (from, to)).collect();
        for (from, end) in crate::links::resolve(&new, &stored_links[&project_id]) {
            target.insert((project_id, from), end.to_owned());
        }
        looping
            .extend(froms.iter().filter(|from| !target.contains_key(&(project_id, **from))).map(|f| (project_id, *f)));
    }
    let mut written = HashSet::new();
    let stored_at = link_time();
    // An id a repair linked to itself (a loop undone) is linked anew by a
    // row dated before that one, so that it counts as the id's first link.
    let mut undone: HashMap<(i64, &str), i64> = HashMap::new();
    for (&project_id, froms) in &new_froms {
        let stored = &stored_links[&project_id];
        let selves: Vec<&str> = froms.iter().copied().filter(|id| stored.get(*id).is_some_and(|to| to == id)).collect();
        if !selves.is_empty() {
            for (id, (_, at)) in first_links_of(client, project_id, &selves).await? {
                if let Some(from) = selves.iter().find(|from| **from == id) {
                    undone.insert((project_id, *from), at - 1);
                }
            }
        }
    }
    let rows: Vec<IdentityRow> = updates
        .iter()
        .filter_map(|u| {
            let anonymous_id = u.anonymous_id.as_deref()?;
            if looping.contains(&(u.project_id, anonymous_id)) {
                return None;
            }
            let user_id = target.get(&(u.project_id, anonymous_id)).map_or(u.user_id.as_str(), String::as_str);
            (anonymous_id != user_id && written.insert((u.project_id, anonymous_id))).then_some(IdentityRow {
                project_id: u.project_id,
                anonymous_id,
                user_id,
                linked_at_ms: undone.get(&(u.project_id, anonymous_id)).copied().unwrap_or(stored_at),
            })
        })
        .collect();
    insert(client, &rows).await?;
    // The new links' chains; in doubt, every id the batch links: a try
    // whose links were stored but whose repair failed (a lost connection,
    // a crash) comes again with them stored, its chains still to set right.
    // Not always: a repair reads the project's links, and most identifies
    // repeat a link made long before.
    let mut linked = new_froms;
    if in_doubt {
        linked.clear();
        for u in updates {
            if let Some(from) = u.anonymous_id.as_deref().filter(|from| *from != u.user_id) {
                linked.entry(u.project_id).or_default().push(from);
            }
        }
    }
    for (project_id, mut froms) in linked {
        froms.sort_unstable();
        froms.dedup();
        repair(client, project_id, &froms).await?;
    }
    Ok(())
}

/// How a walk along first links from an id ended.
enum Walk {
    /// At a final id: the ids walked through, the start first, the end last.
    End(Vec<String>),
    /// Back at an id of the walk: the ids of the loop.
    Loop(Vec<String>),
}

fn walk(first: &HashMap<String, (String, i64)>, start: &str) -> Walk {
    let mut path = vec![start.to_owned()];
    // Until an id linked to no one, or to itself.
    while let Some((to, _)) = first.get(&path[path.len() - 1]).filter(|(to, _)| *to != path[path.len() - 1]) {
        if path.len() > REPAIR_HOPS {
            break;
        }
        if let Some(at) = path.iter().position(|id| id == to) {
            return Walk::Loop(path.split_off(at));
        }
        path.push(to.clone());
    }
    Walk::End(path)
}

/// Sets right the chains through `linked`, the ids a write has just linked
/// (its rows stored), and through the ids whose links name them. A writer
/// linking ids of the same chains at the same moment looked its links up
/// before these were stored, and this write before its were, so:
/// - a link may name an id now linked on (a chain): it moves to the
///   chain's end;
/// - two ids may be linked each way (a loop): the loop's latest link
///   (its time, then its id, decides) is undone by a row linking its id
///   to itself, which readers take as no link.
///
/// Both writers repair once their rows are stored, so the later sees both
/// writes. A repair's own rows may land after the other writer's repair
/// read the links (each then set right a chain the other moved on), so a
/// repair that wrote rows repairs again through the ids it wrote, until it
/// writes none: whoever writes last reads last. Rows are dated just before
/// their id's first link, so that they count as it.
async fn repair(client: &clickhouse::Client, project_id: i64, linked: &[&str]) -> Result<(), StoreError> {
    let mut linked: Vec<String> = linked.iter().map(|id| (*id).to_owned()).collect();
    for _ in 0..REPAIR_HOPS {
        let ids: Vec<&str> = linked.iter().map(String::as_str).collect();
        let rows = repairs(client, project_id, &ids).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<IdentityRow> = rows
            .iter()
            .map(|(anonymous_id, user_id, linked_at_ms)| IdentityRow {
                project_id,
                anonymous_id,
                user_id,
                linked_at_ms: *linked_at_ms,
            })
            .collect();
        insert(client, &rows).await?;
        linked = rows.iter().map(|row| row.anonymous_id.to_owned()).collect();
        linked.sort_unstable();
        linked.dedup();
    }
    Ok(())
}

/// The rows that set right the chains through `linked` as stored now: each
/// an id, the id it is to name, and when (see [`repair`]).
async fn repairs(
    client: &clickhouse::Client,
    project_id: i64,
    linked: &[&str],
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let mut first = links_to(client, project_id, linked).await?;
    let starts: Vec<String> = linked.iter().map(|id| (*id).to_owned()).chain(first.keys().cloned()).collect();
    // The first links of every id the walks may pass, a hop at a time.
    let mut looked: HashSet<String> = first.keys().cloned().collect();
    let mut asking: Vec<String> = starts.iter().chain(first.values().map(|(to, _)| to)).cloned().collect();
    for _ in 0..REPAIR_HOPS {
        asking.retain(|id| looked.insert(id.clone()));
        if asking.is_empty() {
            break;
        }
        let ids: Vec<&str> = asking.iter().map(String::as_str).collect();
        let found = first_links_of(client, project_id, &ids).await?;
        asking = found.values().map(|(to, _)| to.clone()).collect();
        first.extend(found);
    }
    let mut rows: Vec<(String, String, i64)> = Vec::new();
    for start in &starts {
        loop {
            match walk(&first, start) {
                Walk::Loop(ids) => {
                    let latest = ids.into_iter().max_by_key(|id| (first[id].1, id.clone())).expect("a loop has ids");
                    let at = first[&latest].1 - 1;
                    rows.push((latest.clone(), latest.clone(), at));
                    first.insert(latest.clone(), (latest, at));
                }
                Walk::End(path) => {
                    let end = path.last().expect("a walk has a start").clone();
                    for id in &path[..path.len().saturating_sub(2)] {
                        let at = first[id].1 - 1;
                        rows.push((id.clone(), end.clone(), at));
                        first.insert(id.clone(), (end.clone(), at));
                    }
                    break;
                }
            }
        }
    }
    Ok(rows)
}
