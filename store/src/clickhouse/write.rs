//! Writing: events as one RowBinary insert per batch, people as new rows
//! carrying their merged traits (the table keeps the newest per person).

use super::identities;
use super::mutations::{IdSet, Mutations};
use crate::{StoreError, CLICKHOUSE_FIRST_LINK};
use chrono::Datelike;
use clickhouse::Row;
use leanloop_core::{Event, UserUpdate};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One `events` row, borrowing from the event it stores.
#[derive(Row, Serialize)]
struct EventRow<'a> {
    #[serde(with = "clickhouse::serde::uuid")]
    uuid: Uuid,
    project_id: i64,
    kind: &'a str,
    name: &'a str,
    timestamp: u32,
    timestamp_ms: i64,
    received_at_ms: i64,
    timestamp_clamped: u8,
    anonymous_id: Option<&'a str>,
    user_id: Option<&'a str>,
    session_id: Option<&'a str>,
    release: Option<&'a str>,
    url: Option<&'a str>,
    path: Option<&'a str>,
    page_name: Option<&'a str>,
    referrer: Option<&'a str>,
    referrer_domain: Option<&'a str>,
    utm_source: Option<&'a str>,
    utm_medium: Option<&'a str>,
    utm_campaign: Option<&'a str>,
    utm_term: Option<&'a str>,
    utm_content: Option<&'a str>,
    browser: Option<&'a str>,
    browser_version: Option<&'a str>,
    os: Option<&'a str>,
    device_type: Option<&'a str>,
    country: Option<&'a str>,
    ip: Option<&'a str>,
    library: Option<&'a str>,
    properties: &'a str,
    prop_keys: Vec<Cow<'a, str>>,
    prop_values: Vec<Cow<'a, str>>,
}

/// `DateTime` holds seconds in `u32`: times outside it are pinned to its ends
/// (the exact time stays in `timestamp_ms`).
pub fn clamp_seconds(seconds: i64) -> u32 {
    seconds.clamp(0, u32::MAX as i64) as u32
}

fn row(e: &Event) -> EventRow<'_> {
    let (prop_keys, prop_values) = super::props::flatten(&e.properties);
    EventRow {
        uuid: e.uuid,
        project_id: e.project_id,
        kind: e.kind.as_str(),
        name: &e.name,
        timestamp: clamp_seconds(e.timestamp_ms.div_euclid(1000)),
        timestamp_ms: e.timestamp_ms,
        received_at_ms: e.received_at_ms,
        timestamp_clamped: e.timestamp_clamped as u8,
        anonymous_id: e.anonymous_id.as_deref(),
        user_id: e.user_id.as_deref(),
        session_id: e.session_id.as_deref(),
        release: e.release.as_deref(),
        url: e.url.as_deref(),
        path: e.path.as_deref(),
        page_name: e.page_name.as_deref(),
        referrer: e.referrer.as_deref(),
        referrer_domain: e.referrer_domain.as_deref(),
        utm_source: e.utm_source.as_deref(),
        utm_medium: e.utm_medium.as_deref(),
        utm_campaign: e.utm_campaign.as_deref(),
        utm_term: e.utm_term.as_deref(),
        utm_content: e.utm_content.as_deref(),
        browser: e.browser.as_deref(),
        browser_version: e.browser_version.as_deref(),
        os: e.os.as_deref(),
        device_type: e.device_type.as_deref(),
        country: e.country.as_deref(),
        ip: e.ip.as_deref(),
        library: e.library.as_deref(),
        properties: &e.properties,
        prop_keys,
        prop_values,
    }
}

/// Most monthly partitions one INSERT may touch: ClickHouse refuses an
/// insert spanning more than 100 (`max_partitions_per_insert_block`), and a
/// client may send events from any month.
const MONTHS_PER_INSERT: usize = 90;

/// The partition (`toYYYYMM(timestamp)`) an event lands in.
fn month(event: &Event) -> i64 {
    let seconds = clamp_seconds(event.timestamp_ms.div_euclid(1000)) as i64;
    chrono::DateTime::from_timestamp(seconds, 0).map(|t| t.year() as i64 * 12 + t.month0() as i64).unwrap_or(0)
}

/// One write's rows, streamed into ClickHouse as they come. ClickHouse makes
/// one part per partition per insert, so fewer, larger inserts are what keep
/// merges cheap: a new INSERT starts only when the next row would take the
/// current one past [`MONTHS_PER_INSERT`]. Each carries a query id naming
/// `database` (`fence.rs`). The server parses what was sent while the
/// caller prepares more.
pub struct Inserts<'c> {
    client: &'c clickhouse::Client,
    database: &'c str,
    current: Option<clickhouse::insert::Insert<EventRow<'static>>>,
    months: HashSet<i64>,
    /// An INSERT was started and has not been seen to end well: it may
    /// still land, or be running on the server.
    unsettled: bool,
}

impl<'c> Inserts<'c> {
    pub fn new(client: &'c clickhouse::Client, database: &'c str) -> Inserts<'c> {
        Inserts { client, database, current: None, months: HashSet::new(), unsettled: false }
    }

    /// Sends `events`, grouped by month. They are stored when their INSERT
    /// ends: at [`Inserts::end`], or when a month past the limit starts the
    /// next one.
    pub async fn write_all(&mut self, events: &[&Event]) -> Result<(), StoreError> {
        let mut by_month: Vec<(i64, &Event)> = events.iter().map(|e| (month(e), *e)).collect();
        by_month.sort_by_key(|(m, _)| *m);
        for (m, event) in by_month {
            self.write(m, event).await?;
        }
        Ok(())
    }

    async fn write(&mut self, month: i64, event: &Event) -> Result<(), StoreError> {
        if !self.months.contains(&month) && self.months.len() == MONTHS_PER_INSERT {
            self.end().await?;
        }
        let insert = match &mut self.current {
            Some(insert) => insert,
            none => none.insert({
                self.unsettled = true;
                self.client
                    .insert::<EventRow<'static>>("events")
                    .await?
                    .with_setting("query_id", super::fence::query_id(self.database))
            }),
        };
        self.months.insert(month);
        insert.write(&row(event)).await?;
        Ok(())
    }

    /// Finishes the open INSERT, if any, and waits until it is stored.
    pub async fn end(&mut self) -> Result<(), StoreError> {
        self.months.clear();
        if let Some(insert) = self.current.take() {
            insert.end().await?;
        }
        self.unsettled = false;
        Ok(())
    }

    /// Whether an INSERT of this write may still be running or land after
    /// an error (see `fence.rs`).
    pub fn unsettled(&self) -> bool {
        self.unsettled
    }
}

/// Bytes of ids in one look-up query: a query's text is capped (256 KB on
/// older servers), and one id may be long.
const IDS_BYTES_PER_QUERY: usize = 64 * 1024;

/// `ids` in runs whose total length stays under [`IDS_BYTES_PER_QUERY`].
pub(super) fn bounded_chunks<'a>(ids: &'a [&'a str]) -> Vec<&'a [&'a str]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, id) in ids.iter().enumerate() {
        if i > start && bytes + id.len() > IDS_BYTES_PER_QUERY {
            chunks.push(&ids[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += id.len() + 4;
    }
    if start < ids.len() {
        chunks.push(&ids[start..]);
    }
    chunks
}

#[derive(Row, Serialize, Deserialize, Clone)]
pub struct UserRow {
    pub project_id: i64,
    pub user_id: String,
    pub traits: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub version: u64,
}

/// The user each updated id was linked to before this batch, where that
/// user is linked to no one (links name a final id; a loop an earlier
/// version stored is left alone).
async fn owners(client: &clickhouse::Client, updates: &[UserUpdate]) -> Result<crate::traits::Owners, StoreError> {
    let mut owners = crate::traits::Owners::new();
    let projects: HashSet<i64> = updates.iter().map(|u| u.project_id).collect();
    for project_id in projects {
        let mut ids: Vec<&str> =
            updates.iter().filter(|u| u.project_id == project_id).map(|u| u.user_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let found = identities::stored_links_of(client, project_id, &ids).await?;
        let mut targets: Vec<&str> = found.values().map(String::as_str).collect();
        targets.sort_unstable();
        targets.dedup();
        let linked_on = identities::stored_links_of(client, project_id, &targets).await?;
        for (id, to) in &found {
            // An id linked to itself (a loop undone) is final.
            if id != to && linked_on.get(to).is_none_or(|next| next == to) {
                owners.insert((project_id, id.clone()), to.clone());
            }
        }
    }
    Ok(owners)
}

/// Writes each updated person's merged traits and seen times, and the
/// anonymous ids identify linked. `in_doubt`: an earlier try of these
/// updates may have stored their links without setting the chains through
/// them right (see `identities::links`).
pub async fn users(client: &clickhouse::Client, updates: &[UserUpdate], in_doubt: bool) -> Result<(), StoreError> {
    if updates.is_empty() {
        return Ok(());
    }
    let owners = owners(client, updates).await?;
    let mut people: HashMap<(i64, &str), (Vec<&UserUpdate>, i64, i64)> = HashMap::new();
    for u in updates {
        let entry = people.entry(crate::traits::person_of(u, &owners)).or_insert((Vec::new(), i64::MAX, i64::MIN));
        entry.0.push(u);
        entry.1 = entry.1.min(u.seen_at_ms);
        entry.2 = entry.2.max(u.seen_at_ms);
    }
    // Ids linked in this batch bring their traits to their user, on their
    // first link only (see `traits::merge_linked`).
    let first_links = crate::traits::first_links(updates);
    let mut stored: HashMap<(i64, String), UserRow> = HashMap::new();
    let mut joining: HashMap<(i64, &str), Vec<&str>> = HashMap::new();
    let mut new_links: Vec<(i64, &str, &str)> = Vec::new();
    // Stored links of the ids the batch links and links to, per project:
    // whether a linked id was linked before (a repeated identify brings
    // nothing), and where a new link's user goes on (`links.rs`).
    let mut stored_links: HashMap<i64, HashMap<String, String>> = HashMap::new();
    let projects: HashSet<i64> = people.keys().map(|(p, _)| *p).collect();
    for project_id in projects {
        let mut linking: Vec<&str> =
            first_links.iter().filter(|(p, ..)| *p == project_id).flat_map(|&(_, from, to, _)| [from, to]).collect();
        linking.sort_unstable();
        linking.dedup();
        let before = stored_links.entry(project_id).or_default();
        before.extend(identities::stored_links_of(client, project_id, &linking).await?);
        for &(_, from, to, _) in
            // An id linked to itself (a loop undone) was linked to no one.
            first_links
                .iter()
                .filter(|(p, from, ..)| *p == project_id && before.get(*from).is_none_or(|to| to == from))
        {
            joining.entry(crate::traits::owner_of(project_id, to, &owners)).or_default().push(from);
            new_links.push((project_id, from, to));
        }
        let joined = joining.iter().filter(|((p, _), _)| *p == project_id).flat_map(|(_, froms)| froms.iter().copied());
        let ids: Vec<&str> = people
            .keys()
            .filter(|(p, _)| *p == project_id)
            .map(|(_, u)| *u)
            .chain(joined.filter(|from| !people.contains_key(&(project_id, *from))))
            .collect();
        for chunk in bounded_chunks(&ids) {
            for row in super::read::user_rows(client, project_id, chunk).await? {
                stored.insert((row.project_id, row.user_id.clone()), row);
            }
        }
    }
    let mut rows = Vec::with_capacity(people.len());
    let mut refused = 0;
    for (&(project_id, user_id), (batch, first, last)) in &people {
        let mut traits = Map::new();
        let (mut first_seen, mut last_seen, mut version) = (*first, *last, 0);
        if let Some(current) = stored.get(&(project_id, user_id.to_owned())) {
            traits = crate::traits::object(&current.traits);
            first_seen = first_seen.min(current.first_seen_ms);
            last_seen = last_seen.max(current.last_seen_ms);
            version = current.version;
        }
        for from in joining.get(&(project_id, user_id)).into_iter().flatten() {
            let own = people.get(&(project_id, *from)).map_or(&[][..], |p| &p.0[..]);
            let linked = stored.get(&(project_id, (*from).to_owned())).map(|r| r.traits.as_str());
            crate::traits::merge_linked(&mut traits, linked, own);
        }
        refused += crate::traits::apply(&mut traits, batch);
        rows.push(UserRow {
            project_id,
            user_id: user_id.to_owned(),
            traits: Value::Object(traits).to_string(),
            first_seen_ms: first_seen,
            last_seen_ms: last_seen,
            version: version + 1,
        });
    }
    crate::traits::warn_refused(refused);
    let mut insert = client.insert::<UserRow>("users").await?;
    for row in &rows {
        insert.write(row).await?;
    }
    insert.end().await?;

    identities::links(client, updates, &new_links, &stored_links, in_doubt).await?;
    let merged = Merged::of(&rows, &stored, &joining);
    let written = rows.iter().map(|row| (row.project_id, row.user_id.as_str()));
    let linked = new_links.iter().map(|&(project_id, from, _)| (project_id, from));
    fill_from_raced_links(client, written.chain(linked).collect(), &merged).await
}

/// What a write merged itself at the links it made first: each linked id's
/// row it merged (as read, or as this write stored it) and the user's row
/// it stored with them. Two writers may store rows of the same version, so
/// a row is known by its traits too.
struct Merged<'a> {
    /// (project, id) → (user, the id's row merged: version and traits).
    ids: HashMap<(i64, &'a str), (&'a str, u64, &'a str)>,
    /// (project, user) → the traits this write stored for them.
    users: HashMap<(i64, &'a str), &'a str>,
}

impl<'a> Merged<'a> {
    fn of(
        rows: &'a [UserRow],
        stored: &'a HashMap<(i64, String), UserRow>,
        joining: &HashMap<(i64, &'a str), Vec<&'a str>>,
    ) -> Merged<'a> {
        let written: HashMap<(i64, &str), &UserRow> =
            rows.iter().map(|row| ((row.project_id, row.user_id.as_str()), row)).collect();
        let mut ids = HashMap::new();
        for (&(project_id, user), froms) in joining {
            for &from in froms {
                let own = written.get(&(project_id, from)).copied();
                let row = own.or_else(|| stored.get(&(project_id, from.to_owned())));
                let (version, traits) = row.map_or((0, ""), |row| (row.version, row.traits.as_str()));
                ids.insert((project_id, from), (user, version, traits));
            }
        }
        let users = written.into_iter().map(|(key, row)| (key, row.traits.as_str())).collect();
        Merged { ids, users }
    }

    /// Whether `id`, now linked to `to` with its row `now` beside the user's
    /// row `user_now`, is as this write merged it: no other writer linked
    /// it elsewhere, gave it traits, or stored the user's row since.
    fn untouched(&self, project_id: i64, id: &str, to: &str, now: &UserRow, user_now: Option<&UserRow>) -> bool {
        let merged = self.ids.get(&(project_id, id));
        merged == Some(&(to, now.version, now.traits.as_str()))
            && self.users.get(&(project_id, to)).copied() == user_now.map(|row| row.traits.as_str())
    }
}

/// Traits a link's race left behind. Another writer may link an id this
/// write gave traits to after this write looked its owner up (a browser's
/// identify through one collector, a server's alias through another), or
/// give traits to an id this write linked after this write read them: the
/// id's traits then miss the user they fill at the link. Looked at once
/// both writes' rows are stored (each writer stores its people before its
/// links), the later writer finds both and fills the gaps of the user the
/// id is linked to (see [`crate::traits::merge_linked`]), as one write
/// seeing both would have. `ids` are the people this write stored and the
/// ids it linked first. An id as this write merged it (`merged`) met no
/// race and is left alone: a trait the write's own updates removed from the
/// user then stays removed.
async fn fill_from_raced_links(
    client: &clickhouse::Client,
    mut ids: Vec<(i64, &str)>,
    merged: &Merged<'_>,
) -> Result<(), StoreError> {
    ids.sort_unstable();
    ids.dedup();
    let mut rows = Vec::new();
    for project_id in ids.iter().map(|(p, _)| *p).collect::<BTreeSet<i64>>() {
        let of_project: Vec<&str> = ids.iter().filter(|(p, _)| *p == project_id).map(|(_, id)| *id).collect();
        // Links name a final id; an id linked to itself is linked to no one.
        let links: HashMap<String, String> = identities::stored_links_of(client, project_id, &of_project)
            .await?
            .into_iter()
            .filter(|(id, to)| id != to)
            .collect();
        if links.is_empty() {
            continue;
        }
        let people: Vec<&str> = links.iter().flat_map(|(id, to)| [id.as_str(), to.as_str()]).collect();
        let mut stored: HashMap<String, UserRow> = HashMap::new();
        for chunk in bounded_chunks(&people) {
            for row in super::read::user_rows(client, project_id, chunk).await? {
                stored.insert(row.user_id.clone(), row);
            }
        }
        // Each user the ids fill, and whether they filled any gap.
        let mut filled: HashMap<&str, (UserRow, bool)> = HashMap::new();
        for (id, to) in &links {
            let Some(linked) = stored.get(id) else { continue };
            if merged.untouched(project_id, id, to, linked, stored.get(to)) {
                continue;
            }
            let (user, changed) = filled.entry(to.as_str()).or_insert_with(|| {
                let row = match stored.get(to) {
                    Some(row) => UserRow { version: row.version + 1, ..row.clone() },
                    None => UserRow {
                        project_id,
                        user_id: to.clone(),
                        traits: "{}".into(),
                        first_seen_ms: linked.first_seen_ms,
                        last_seen_ms: linked.last_seen_ms,
                        version: 1,
                    },
                };
                (row, false)
            });
            let mut traits = crate::traits::object(&user.traits);
            let had = traits.len();
            crate::traits::merge_linked(&mut traits, Some(&linked.traits), &[]);
            if traits.len() > had {
                user.traits = Value::Object(traits).to_string();
                user.first_seen_ms = user.first_seen_ms.min(linked.first_seen_ms);
                user.last_seen_ms = user.last_seen_ms.max(linked.last_seen_ms);
                *changed = true;
            }
        }
        rows.extend(filled.into_values().filter(|(_, changed)| *changed).map(|(row, _)| row));
    }
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = client.insert::<UserRow>("users").await?;
    for row in &rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}

#[derive(Row, Serialize)]
struct MemberRow<'a> {
    project_id: i64,
    cohort_id: i64,
    version: i64,
    user_id: &'a str,
}

pub async fn cohort(
    client: &clickhouse::Client,
    project_id: i64,
    cohort_id: i64,
    version: i64,
    user_ids: &[String],
) -> Result<(), StoreError> {
    if user_ids.is_empty() {
        return Ok(());
    }
    let mut insert = client.insert::<MemberRow<'static>>("cohort_members").await?;
    for user_id in user_ids {
        insert.write(&MemberRow { project_id, cohort_id, version, user_id }).await?;
    }
    insert.end().await?;
    Ok(())
}

/// Old versions go by an asynchronous mutation: readers name the version
/// they read, so rows waiting to be deleted are never counted.
pub async fn drop_cohort_versions(
    client: &clickhouse::Client,
    mutations: &Mutations,
    project_id: i64,
    cohort_id: i64,
    below: i64,
) -> Result<(), StoreError> {
    let alter = mutations.alter("cohort_members");
    client
        .query(&format!("{alter} DELETE WHERE project_id = ? AND cohort_id = ? AND version < ?"))
        .bind(project_id)
        .bind(cohort_id)
        .bind(below)
        .execute()
        .await?;
    Ok(())
}

/// A person to erase, and how long to wait for the deletes to finish.
pub struct Erasure<'a> {
    pub project_id: i64,
    pub user_id: &'a str,
    pub wait_until: Instant,
}

/// Deletes a person's rows with `ALTER TABLE ... DELETE` mutations (every
/// server version has them) and waits until they are done, so the person is
/// gone from every answer when this returns; or until `wait_until`, then
/// [`StoreError::StillDeleting`]: the mutations go on.
pub async fn delete_person(
    client: &clickhouse::Client,
    mutations: &Mutations,
    database: &str,
    erasure: Erasure<'_>,
) -> Result<u64, StoreError> {
    let Erasure { project_id, user_id, wait_until } = erasure;
    // Nothing is deleted before the person's ids are found: a look-up that
    // outlasts the wait answers "unavailable", and a retry finds the person
    // whole. (Their events are counted whatever it takes: a count cut short
    // on a large table would refuse the erasure on every try.)
    let left = wait_until.saturating_duration_since(Instant::now());
    // The server stops them a moment after: cut short here, they would
    // run on there.
    let bounded = client.clone().with_setting("max_execution_time", (left.as_secs() + 1).to_string());
    let ids = tokio::time::timeout(left, person_ids(&bounded, project_id, user_id)).await.map_err(|_| {
        StoreError::Unavailable("the person's ids were not found in time; nothing was deleted".into())
    })??;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    // The ids are a set (`IN`, hashed), not `has` over the list, which
    // compares each row with every id: a person with 60,000 ids took
    // minutes of both cores.
    let counted = IdSet::Bound(&ids);
    let count = format!("SELECT count() FROM events WHERE project_id = ? AND {}", counted.condition(PERSON));
    let events: u64 = counted.bind(client.query(&count).bind(project_id)).fetch_one().await?;
    // Each of this erasure's mutations carries its tag, which the server
    // keeps in the mutation's text: only they are awaited, not another
    // one, stuck (a mutation that fails on every try stays undone), nor
    // another erasure's.
    let tag = Tag::new();
    let mut made = 0;
    // How long a delete may wait for every server of a cluster to take it:
    // a few seconds, and none once one was left queued (a server is down,
    // and each would wait for it in vain).
    let mut taken = true;
    // A second is kept: 18.16 looks at its queue once a second.
    let wait = |taken: bool| match taken {
        true => {
            let left = wait_until.saturating_duration_since(Instant::now());
            left.saturating_sub(Duration::from_secs(1)).min(Duration::from_secs(5))
        }
        false => Duration::ZERO,
    };
    for set in mutations.id_sets(&ids).iter().filter(|set| !set.is_empty()) {
        let alter = mutations.alter("events");
        let statement =
            format!("{alter} DELETE WHERE project_id = ? AND {} AND {}", set.condition(PERSON), tag.condition());
        taken &= mutations.make(set.bind(client.query(&statement).bind(project_id)), wait(taken)).await?;
        made += 1;
    }
    // Their links, with every row of the ids linked to them (a link moved
    // on to them keeps its first row beside, which must not come back);
    // cohort memberships, as a linked visitor may be one of its own; and the
    // people linked to them (an anonymous visitor given traits).
    for (table, id) in [("identities", "anonymous_id"), ("cohort_members", "user_id"), ("users", "user_id")] {
        for set in mutations.id_sets(&ids) {
            let alter = mutations.alter(table);
            let condition = format!("(user_id = ? OR {}) AND {}", set.condition(id), tag.condition());
            let statement = format!("{alter} DELETE WHERE project_id = ? AND {condition}");
            taken &=
                mutations.make(set.bind(client.query(&statement).bind(project_id).bind(user_id)), wait(taken)).await?;
            made += 1;
        }
    }
    // Looked at often at first (most erasures take a moment), then less.
    let mut pause = Duration::from_millis(20);
    loop {
        // A look begun at the wait's end has a moment to answer.
        let left = wait_until.saturating_duration_since(Instant::now()) + Duration::from_millis(250);
        let unfinished = mutations.unfinished(client, database, &tag.0, made);
        let Ok(unfinished) = tokio::time::timeout(left, unfinished).await else {
            return Err(StoreError::StillDeleting { events });
        };
        if unfinished? == 0 {
            return Ok(events);
        }
        let left = wait_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StoreError::StillDeleting { events });
        }
        // The last look is at the wait's end, not a pause before it.
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Whose an event is, as insights stitch people: its user id, else its
/// anonymous id. An event is a person's when this is one of their ids, so
/// another user's events on a device they shared stay theirs.
const PERSON: &str = "ifNull(coalesce(user_id, anonymous_id), '')";

/// A person's ids: their own, unless linked to someone else first, and the
/// anonymous ids first linked to them.
async fn person_ids(client: &clickhouse::Client, project_id: i64, user_id: &str) -> Result<Vec<String>, StoreError> {
    // The anonymous ids whose first link is to this person: an id linked to
    // someone else first is that one's, with its events.
    let mut ids: Vec<String> = client
        .query(&format!(
            "SELECT anonymous_id FROM identities WHERE project_id = ? AND anonymous_id IN
                 (SELECT anonymous_id FROM identities WHERE project_id = ? AND user_id = ?)
             GROUP BY anonymous_id HAVING {CLICKHOUSE_FIRST_LINK} = ?"
        ))
        .bind(project_id)
        .bind(project_id)
        .bind(user_id)
        .bind(user_id)
        .fetch_all()
        .await?;
    // Their own id is theirs unless it was linked to someone else first.
    let owners: Vec<String> = client
        .query(&format!(
            "SELECT {CLICKHOUSE_FIRST_LINK} FROM identities WHERE project_id = ? AND anonymous_id = ?
             GROUP BY anonymous_id"
        ))
        .bind(project_id)
        .bind(user_id)
        .fetch_all()
        .await?;
    if owners.iter().all(|owner| owner == user_id) {
        ids.push(user_id.to_owned());
    }
    Ok(ids)
}

/// Text put in each of an erasure's mutations, to find them by.
struct Tag(String);

impl Tag {
    fn new() -> Tag {
        Tag(format!("leanloop erasure {}", uuid::Uuid::new_v4()))
    }

    /// A condition always true, kept in the mutation's text. Its text is
    /// made here, not client input: a UUID's hex digits and dashes.
    fn condition(&self) -> String {
        format!("'{}' != ''", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_up_lists_stay_under_the_query_size_cap() {
        let long = "x".repeat(40_000);
        let ids: Vec<&str> = vec!["a", &long, &long, "b", "c"];
        let chunks = bounded_chunks(&ids);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), ids.len());
        assert!(chunks
            .iter()
            .all(|c| c.len() == 1 || c.iter().map(|i| i.len() + 4).sum::<usize>() <= IDS_BYTES_PER_QUERY));
        assert_eq!(bounded_chunks(&[]).len(), 0);
    }
}
