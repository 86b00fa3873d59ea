//! Time ranges, time zones and interval buckets.
//!
//! Buckets are computed in SQL as integer keys of *local* time: the event's
//! UTC ms plus the zone's offset at that instant. The offsets in force over a
//! query's range are found here (with the IANA database in `chrono-tz`) and
//! spliced in as a `CASE` over UTC times, so both stores bucket identically
//! without time zone support of their own (DuckDB's needs an extension;
//! ClickHouse 18.16 has it, with other rules).

use crate::sql::{int_div, month_index};
use crate::AnalyticsError;
use chrono::{
    DateTime, Datelike, Days, Duration, Months, NaiveDate, NaiveDateTime, Offset, SecondsFormat, TimeZone, Utc,
};
use chrono_tz::Tz;
use leanloop_store::Dialect;
use serde::{Deserialize, Serialize};

/// At most this many buckets per answer.
pub const MAX_BUCKETS: i64 = 10_000;
pub use leanloop_core::EARLIEST_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

/// A query's time range and zone. `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from_ms: i64,
    pub to_ms: i64,
    pub tz: Tz,
}

impl Window {
    /// From the request's text: RFC 3339 times, dates (local midnight; a
    /// `date_to` date includes that whole day), or times before `now_ms`
    /// (`-7d`, see [`relative`]). Defaults: the last 7 days.
    pub fn parse(
        date_from: Option<&str>,
        date_to: Option<&str>,
        timezone: Option<&str>,
        now_ms: i64,
    ) -> Result<Window, AnalyticsError> {
        let tz = zone(timezone)?;
        let to_ms = match date_to.filter(|t| !t.is_empty()) {
            None => now_ms,
            Some(t) => parse_time(t, tz, now_ms, "date_to", true)?,
        };
        let from_ms = match date_from.filter(|t| !t.is_empty()) {
            // The 7 days before `date_to`, as many of them as there are.
            None if to_ms <= EARLIEST_MS => {
                return Err(AnalyticsError::invalid("date_to", "`date_to` must be after 1970-01-02T00:00:00Z"));
            }
            None => (to_ms - 7 * 86_400_000).max(EARLIEST_MS),
            Some(t) => parse_time(t, tz, now_ms, "date_from", false)?,
        };
        if from_ms >= to_ms {
            let to = if date_to.is_some_and(|t| !t.is_empty()) { "`date_to`" } else { "now (the default `date_to`)" };
            return Err(AnalyticsError::invalid("date_from", format!("`date_from` must be before {to}")));
        }
        if from_ms < EARLIEST_MS {
            return Err(AnalyticsError::invalid("date_from", "`date_from` must be 1970-01-02T00:00:00Z or later"));
        }
        Ok(Window { from_ms, to_ms, tz })
    }

    /// The range just before this one, as long: in elapsed time for minute
    /// and hour buckets, in local clock time for days and longer, so that
    /// across a clock change it still starts at the same local time (a
    /// midnight) and has as many days as this one (a day the zone skipped
    /// whole, as Samoa did, is not counted: the range starts a day earlier).
    pub fn previous(&self, interval: Interval) -> Window {
        let elapsed = self.to_ms - self.from_ms;
        let from_ms = match interval {
            Interval::Minute | Interval::Hour => self.from_ms - elapsed,
            Interval::Day | Interval::Week | Interval::Month => {
                let (from, to) = (self.wall(self.from_ms), self.wall(self.to_ms));
                let start = local_instant(self.tz, from - (to - from));
                let mut before = Window {
                    from_ms: start.map_or(self.from_ms - elapsed, |t| t.timestamp_millis()),
                    to_ms: self.from_ms,
                    tz: self.tz,
                };
                // Where a skipped day falls in one range and not the other,
                // the earlier one moves its start by a day: a step or two.
                let days = self.days();
                for step in [-1, 1] {
                    for _ in 0..=days {
                        let have = before.days();
                        if (step < 0 && have >= days) || (step > 0 && have <= days) {
                            break;
                        }
                        let mut key = before.key(Interval::Day, before.from_ms) + step;
                        // A skipped day starts where the next does: over it.
                        while self.skipped(key) {
                            key += step;
                        }
                        before.from_ms = self.day_start(key);
                    }
                }
                before.from_ms
            }
        };
        Window { from_ms, to_ms: self.from_ms, tz: self.tz }
    }

    /// The UTC ms at which local day `key` starts (see [`local_instant`]).
    fn day_start(&self, key: i64) -> i64 {
        let naive = local_start(Interval::Day, key);
        local_instant(self.tz, naive).map_or_else(|| naive.and_utc().timestamp_millis(), |t| t.timestamp_millis())
    }

    /// Whether the zone skipped local day `key` whole, as Samoa skipped
    /// 2011-12-30 moving across the date line: no instant falls in it, so
    /// it is no bucket.
    fn skipped(&self, key: i64) -> bool {
        self.day_start(key) == self.day_start(key + 1)
    }

    /// How many local days the window touches.
    fn days(&self) -> i64 {
        let (first, last) = (self.key(Interval::Day, self.from_ms), self.key(Interval::Day, self.to_ms - 1));
        (first..=last).filter(|&k| !self.skipped(k)).count() as i64
    }

    /// The wall-clock time `ms` reads, taking the instant a day starts as
    /// its midnight where clocks skip midnight (a day in America/Santiago
    /// may start at 01:00).
    fn wall(&self, ms: i64) -> NaiveDateTime {
        let wall = DateTime::<Utc>::from_timestamp_millis(self.local_ms(ms)).unwrap_or_default().naive_utc();
        let midnight = wall.date().and_hms_opt(0, 0, 0).unwrap_or(wall);
        match local_instant(self.tz, midnight) {
            Some(start) if start.timestamp_millis() == ms => midnight,
            _ => wall,
        }
    }

    /// Offset from UTC in ms at `ms`.
    pub fn offset_ms(&self, ms: i64) -> i64 {
        let utc = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        self.tz.offset_from_utc_datetime(&utc.naive_utc()).fix().local_minus_utc() as i64 * 1000
    }

    /// The offset in force before the window's changes, and each change
    /// (in and around the window) as its instant and the new offset.
    fn offset_changes(&self) -> (i64, Vec<(i64, i64)>) {
        let start = self.from_ms - 2 * 86_400_000;
        let end = self.to_ms + 2 * 86_400_000;
        let mut changes = Vec::new();
        let mut at = start;
        let mut offset = self.offset_ms(at);
        let first = offset;
        while at < end {
            let next = (at + 86_400_000).min(end);
            let next_offset = self.offset_ms(next);
            if next_offset != offset {
                // Narrow down to the second the offset changed.
                let (mut lo, mut hi) = (at, next);
                while hi - lo > 1000 {
                    let mid = lo + (hi - lo) / 2;
                    if self.offset_ms(mid) == offset {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                changes.push((hi - hi.rem_euclid(1000), next_offset));
                offset = next_offset;
            }
            at = next;
        }
        (first, changes)
    }

    /// SQL for local time in ms of the UTC ms column `ts`: a `CASE` over
    /// the offset changes in (and around) this window.
    pub fn local(&self, ts: &str) -> String {
        let (first, changes) = self.offset_changes();
        if changes.is_empty() {
            return if first == 0 { ts.to_owned() } else { format!("({ts} + {first})") };
        }
        let mut case = format!("({ts} + CASE");
        let mut current = first;
        for (change, offset) in changes {
            case.push_str(&format!(" WHEN {ts} < {change} THEN {current}"));
            current = offset;
        }
        case.push_str(&format!(" ELSE {current} END)"));
        case
    }

    /// Local time in ms of a UTC ms time.
    pub fn local_ms(&self, ms: i64) -> i64 {
        ms + self.offset_ms(ms)
    }

    /// Minute and hour buckets are spans of elapsed time aligned to the
    /// zone's clock, not readings of it: the hour a clock repeats is two
    /// buckets and the hour it skips none. They are keyed in UTC, shifted by
    /// the part of the offset below their length (India's half hour), which
    /// a clock moved by half an hour changes (Lord Howe Island): see
    /// [`Elapsed`].
    fn elapsed(&self, interval: Interval) -> Option<Elapsed> {
        let len = match interval {
            Interval::Minute => 60_000,
            Interval::Hour => 3_600_000,
            _ => return None,
        };
        let (first, changes) = self.offset_changes();
        let mut parts = vec![Part { from_ms: i64::MIN, shift: first.rem_euclid(len), add: 0 }];
        for (at, offset) in changes {
            let (shift, before) = (offset.rem_euclid(len), &parts[parts.len() - 1]);
            if shift != before.shift {
                // The bucket the change cuts short ends at it; the next
                // starts there, keyed one past it.
                let last = (at - 1 + before.shift).div_euclid(len) + before.add;
                parts.push(Part { from_ms: at, shift, add: last + 1 - (at + shift).div_euclid(len) });
            }
        }
        Some(Elapsed { len, parts })
    }

    /// The bucket key of a UTC ms time.
    pub fn key(&self, interval: Interval, ms: i64) -> i64 {
        match self.elapsed(interval) {
            Some(elapsed) => elapsed.key(ms),
            None => key_of_local(interval, self.local_ms(ms)),
        }
    }

    /// SQL for the bucket key of the UTC ms column `ts`.
    pub fn key_sql(&self, d: Dialect, interval: Interval, ts: &str) -> String {
        if let Some(elapsed) = self.elapsed(interval) {
            return elapsed.sql(d, ts);
        }
        let local = self.local(ts);
        match interval {
            // Minutes and hours are keyed in elapsed time, above.
            Interval::Minute | Interval::Hour | Interval::Day => int_div(d, &local, 86_400_000),
            Interval::Week => int_div(d, &format!("{} + 3", int_div(d, &local, 86_400_000)), 7),
            Interval::Month => month_index(d, &local),
        }
    }

    /// Keys of every bucket the window touches, in order; too many is a 400.
    pub fn keys(&self, interval: Interval) -> Result<Vec<i64>, AnalyticsError> {
        let first = self.key(interval, self.from_ms);
        let last = self.key(interval, self.to_ms - 1);
        if last - first + 1 > MAX_BUCKETS {
            return Err(AnalyticsError::invalid(
                "interval",
                format!(
                    "{} buckets requested; at most {MAX_BUCKETS}: use a longer interval or a shorter range",
                    last - first + 1
                ),
            ));
        }
        Ok((first..=last).filter(|&k| interval != Interval::Day || !self.skipped(k)).collect())
    }

    /// Whether bucket `key` is a day the zone skipped whole (see
    /// [`Window::keys`], which leaves such days out).
    pub fn is_skipped(&self, interval: Interval, key: i64) -> bool {
        interval == Interval::Day && self.skipped(key)
    }

    /// RFC 3339 labels of the buckets `keys`: each bucket's local start.
    pub fn labels(&self, interval: Interval, keys: &[i64]) -> Vec<String> {
        let elapsed = self.elapsed(interval);
        let label = |key: i64| {
            if let Some(elapsed) = &elapsed {
                let start = DateTime::<Utc>::from_timestamp_millis(elapsed.start(key)).unwrap_or_default();
                return start.with_timezone(&self.tz).to_rfc3339_opts(SecondsFormat::Secs, true);
            }
            let naive = local_start(interval, key);
            let local = local_instant(self.tz, naive).unwrap_or_else(|| self.tz.from_utc_datetime(&naive));
            local.to_rfc3339_opts(SecondsFormat::Secs, true)
        };
        keys.iter().map(|&key| label(key)).collect()
    }

    /// The label of one bucket (see [`Window::labels`]).
    pub fn label(&self, interval: Interval, key: i64) -> String {
        self.labels(interval, &[key]).remove(0)
    }
}

/// Keys of minute or hour buckets: from each part's start (until the next
/// part's), `(ms + shift) div len + add`. A new part begins where the
/// offset's remainder below `len` changes, its `add` chosen so that its
/// first key follows the last of the part before: no key is skipped or
/// shared, and the bucket the change cuts short keeps its key.
struct Elapsed {
    len: i64,
    /// Ordered by `from_ms`; the first from the beginning of time.
    parts: Vec<Part>,
}

struct Part {
    from_ms: i64,
    shift: i64,
    add: i64,
}

impl Elapsed {
    fn part_key(&self, part: &Part, ms: i64) -> i64 {
        (ms + part.shift).div_euclid(self.len) + part.add
    }

    fn key(&self, ms: i64) -> i64 {
        let i = self.parts.partition_point(|p| p.from_ms <= ms).max(1);
        self.part_key(&self.parts[i - 1], ms)
    }

    /// The UTC ms start of bucket `key`.
    fn start(&self, key: i64) -> i64 {
        let i = self.parts.partition_point(|p| p.from_ms == i64::MIN || self.part_key(p, p.from_ms) <= key).max(1);
        let part = &self.parts[i - 1];
        ((key - part.add) * self.len - part.shift).max(part.from_ms)
    }

    fn sql(&self, d: Dialect, ts: &str) -> String {
        let of = |p: &Part| {
            let key = int_div(d, &format!("({ts} + {})", p.shift), self.len);
            if p.add == 0 {
                key
            } else {
                format!("({key} + {})", p.add)
            }
        };
        if self.parts.len() == 1 {
            return of(&self.parts[0]);
        }
        let mut case = String::from("(CASE");
        for (part, next) in self.parts.iter().zip(&self.parts[1..]) {
            case.push_str(&format!(" WHEN {ts} < {} THEN {}", next.from_ms, of(part)));
        }
        case.push_str(&format!(" ELSE {} END)", of(&self.parts[self.parts.len() - 1])));
        case
    }
}

/// A query's `timezone`: an IANA zone, UTC when absent.
pub fn zone(timezone: Option<&str>) -> Result<Tz, AnalyticsError> {
    match timezone.filter(|t| !t.is_empty()) {
        None => Ok(Tz::UTC),
        Some(name) => name.parse().map_err(|_| {
            AnalyticsError::invalid(
                "timezone",
                format!("`timezone` must be an IANA zone such as Europe/Berlin, not `{name}`"),
            )
        }),
    }
}

/// The instant a local wall-clock time names in `tz`: the earlier of two
/// when clocks go back; when clocks jump forward over it, the instant they
/// land, so a day whose midnight is skipped starts when its clock does
/// (America/Sao_Paulo on 2018-11-04 starts at 01:00).
pub fn local_instant(tz: Tz, naive: NaiveDateTime) -> Option<DateTime<Tz>> {
    if let Some(t) = tz.from_local_datetime(&naive).earliest() {
        return Some(t);
    }
    // In a gap: read the time with the offset in force before it (a day
    // earlier; zones never change twice in a day). Gaps start at the
    // times asked for here (midnights, bucket starts), so that is the
    // instant the clock jumped.
    let before = tz.from_local_datetime(&(naive - Duration::days(1))).earliest()?;
    let offset = before.offset().fix().local_minus_utc();
    Some(tz.from_utc_datetime(&(naive - Duration::seconds(offset as i64))))
}

/// An RFC 3339 time as whole milliseconds, rounded up: events are stamped
/// in whole ms, so a bound between two of them keeps its meaning (`from`
/// inclusive, `to` exclusive: `.0005` is after the event at `.000`).
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let t = DateTime::parse_from_rfc3339(text).ok()?;
    let part_of_a_ms = t.timestamp_subsec_nanos() % 1_000_000 != 0;
    Some(t.timestamp_millis() + i64::from(part_of_a_ms))
}

/// A UTC ms time as RFC 3339.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The bucket key of a local time in ms (floor division throughout).
pub fn key_of_local(interval: Interval, local_ms: i64) -> i64 {
    let day = local_ms.div_euclid(86_400_000);
    match interval {
        Interval::Minute => local_ms.div_euclid(60_000),
        Interval::Hour => local_ms.div_euclid(3_600_000),
        Interval::Day => day,
        // 1970-01-01 was a Thursday: +3 makes weeks start on Monday.
        Interval::Week => (day + 3).div_euclid(7),
        Interval::Month => {
            let date = DateTime::<Utc>::from_timestamp_millis(local_ms).unwrap_or_default();
            date.year() as i64 * 12 + date.month0() as i64
        }
    }
}

/// The local wall-clock start of bucket `key`.
pub fn local_start(interval: Interval, key: i64) -> NaiveDateTime {
    let from_ms = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().naive_utc();
    match interval {
        Interval::Minute => from_ms(key * 60_000),
        Interval::Hour => from_ms(key * 3_600_000),
        Interval::Day => from_ms(key * 86_400_000),
        Interval::Week => from_ms((key * 7 - 3) * 86_400_000),
        Interval::Month => NaiveDate::from_ymd_opt(key.div_euclid(12) as i32, key.rem_euclid(12) as u32 + 1, 1)
            .unwrap_or_default()
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default(),
    }
}

fn parse_time(text: &str, tz: Tz, now_ms: i64, field: &'static str, end_of_day: bool) -> Result<i64, AnalyticsError> {
    if let Some(t) = parse_rfc3339_ms(text) {
        return Ok(t);
    }
    if let Some(t) = relative(text, tz, now_ms, end_of_day) {
        return Ok(t);
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let date = if end_of_day { date.succ_opt().unwrap_or(date) } else { date };
        let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
        if let Some(t) = local_instant(tz, midnight) {
            return Ok(t.timestamp_millis());
        }
    }
    Err(AnalyticsError::invalid(
        field,
        format!(
            "`{field}` must be an RFC 3339 time (2024-05-01T00:00:00Z), a date (2024-05-01) \
             or a time before now (-24h, -7d, -4w, -3m, -1y), not `{text}`"
        ),
    ))
}

/// A time before now, as PostHog's API writes it: `-{n}h` is `n` hours
/// before now; `-{n}d`, `w`, `m` and `y` are local midnight `n` days,
/// weeks, calendar months or years before today, so `-7d` starts a whole
/// day, and as an end (`end_of_day`) that day's end, as for a date: `-1d`
/// to `-1d` is yesterday. `None` when `text` is not of that form or falls
/// off the calendar.
fn relative(text: &str, tz: Tz, now_ms: i64, end_of_day: bool) -> Option<i64> {
    let rest = text.strip_prefix('-').filter(|rest| rest.len() > 1 && rest.is_ascii())?;
    let (count, unit) = rest.split_at(rest.len() - 1);
    let n: u32 = count.parse().ok()?;
    if unit == "h" {
        return now_ms.checked_sub(i64::from(n) * 3_600_000);
    }
    let today = tz.from_utc_datetime(&DateTime::<Utc>::from_timestamp_millis(now_ms)?.naive_utc()).date_naive();
    let day = match unit {
        "d" => today.checked_sub_days(Days::new(u64::from(n)))?,
        "w" => today.checked_sub_days(Days::new(u64::from(n) * 7))?,
        "m" => today.checked_sub_months(Months::new(n))?,
        "y" => today.checked_sub_months(Months::new(n.checked_mul(12)?))?,
        _ => return None,
    };
    let day = if end_of_day { day.succ_opt()? } else { day };
    Some(local_instant(tz, day.and_hms_opt(0, 0, 0)?)?.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_between_milliseconds_rounds_up() {
        let ms = |t: &str| parse_rfc3339_ms(t).unwrap();
        let midnight = ms("2026-12-03T00:00:00Z");
        assert_eq!(ms("2026-12-03T00:00:00.0005Z"), midnight + 1);
        assert_eq!(ms("2026-12-03T00:00:00.001Z"), midnight + 1);
        assert_eq!(ms("2026-12-03T00:00:00.001000001Z"), midnight + 2);
        assert_eq!(ms("1969-12-31T23:59:59.9995Z"), 0, "before 1970 too");
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    fn window(from: &str, to: &str, tz: &str) -> Window {
        Window::parse(Some(from), Some(to), Some(tz), 0).unwrap()
    }

    #[test]
    fn dates_are_local_days_and_date_to_is_inclusive() {
        let w = window("2024-03-30", "2024-03-31", "Europe/Berlin");
        assert_eq!(w.from_ms, DateTime::parse_from_rfc3339("2024-03-29T23:00:00Z").unwrap().timestamp_millis());
        // Berlin moved to summer time on 2024-03-31: that day has 23 hours.
        assert_eq!(w.to_ms, DateTime::parse_from_rfc3339("2024-03-31T22:00:00Z").unwrap().timestamp_millis());
        assert_eq!(w.keys(Interval::Day).unwrap().len(), 2);
        let keys = w.keys(Interval::Day).unwrap();
        assert_eq!(w.label(Interval::Day, keys[1]), "2024-03-31T00:00:00+01:00");
        assert_eq!(w.label(Interval::Hour, w.key(Interval::Hour, w.to_ms - 1)), "2024-03-31T23:00:00+02:00");
    }

    #[test]
    fn the_previous_period_has_as_many_local_days_from_a_midnight() {
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis();
        // New York's clocks went back on 2026-11-01, inside the current week.
        let w = window("2026-10-27", "2026-11-02", "America/New_York");
        let before = w.previous(Interval::Day);
        assert_eq!((before.from_ms, before.to_ms), (at("2026-10-20T00:00:00-04:00"), w.from_ms));
        assert_eq!(before.keys(Interval::Day).unwrap().len(), w.keys(Interval::Day).unwrap().len());
        // ... and inside the previous one.
        let w = window("2026-11-02", "2026-11-08", "America/New_York");
        let before = w.previous(Interval::Day);
        assert_eq!(before.from_ms, at("2026-10-26T00:00:00-04:00"));
        assert_eq!(before.keys(Interval::Day).unwrap().len(), 7);
        // Santiago's clocks skipped 2024-09-08's midnight: that day starts at 01:00.
        let w = window("2024-09-08", "2024-09-14", "America/Santiago");
        assert_eq!(w.from_ms, at("2024-09-08T01:00:00-03:00"));
        assert_eq!(w.previous(Interval::Day).from_ms, at("2024-09-01T00:00:00-04:00"));
        // Hours are elapsed time: the 25 hours before a day of 25 hours.
        let w = Window { from_ms: at("2026-11-01T00:00:00-04:00"), to_ms: at("2026-11-02T00:00:00-05:00"), ..w };
        assert_eq!(w.previous(Interval::Hour).from_ms, w.from_ms - 25 * 3_600_000);
    }

    #[test]
    fn hours_and_minutes_are_elapsed_time_when_clocks_change() {
        let utc = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis();
        // New York repeats 01:00-02:00 on 2026-11-01: a day of 25 hours.
        let w = window("2026-11-01", "2026-11-01", "America/New_York");
        let hours = w.keys(Interval::Hour).unwrap();
        assert_eq!(hours.len(), 25);
        let labels: Vec<String> = hours.iter().map(|&k| w.label(Interval::Hour, k)).collect();
        assert_eq!(labels[1..3], ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00"]);
        assert_ne!(
            w.key(Interval::Hour, utc("2026-11-01T05:30:00Z")),
            w.key(Interval::Hour, utc("2026-11-01T06:30:00Z"))
        );
        let minutes = window("2026-11-01T05:58:00Z", "2026-11-01T06:02:00Z", "America/New_York");
        let labels: Vec<String> =
            minutes.keys(Interval::Minute).unwrap().iter().map(|&k| minutes.label(Interval::Minute, k)).collect();
        assert_eq!(
            labels,
            [
                "2026-11-01T01:58:00-04:00",
                "2026-11-01T01:59:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T01:01:00-05:00"
            ]
        );
        // It skips 02:00-03:00 on 2026-03-08: 23 hours, each once.
        let w = window("2026-03-08", "2026-03-08", "America/New_York");
        let labels: Vec<String> = w.keys(Interval::Hour).unwrap().iter().map(|&k| w.label(Interval::Hour, k)).collect();
        assert_eq!(labels.len(), 23);
        assert_eq!(labels[1..3], ["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00"]);
        // Half-hour zones keep their hours on the half hour.
        let w = window("2026-11-01", "2026-11-01", "Asia/Kolkata");
        assert_eq!(w.label(Interval::Hour, w.keys(Interval::Hour).unwrap()[0]), "2026-11-01T00:00:00+05:30");
        assert_eq!(w.keys(Interval::Hour).unwrap().len(), 24);
    }

    #[test]
    fn hours_follow_a_clock_moved_by_half_an_hour() {
        let utc = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis();
        let hours = |w: &Window| {
            let keys = w.keys(Interval::Hour).unwrap();
            assert!(keys.windows(2).all(|k| k[1] == k[0] + 1));
            w.labels(Interval::Hour, &keys)
        };
        // Lord Howe Island goes from +10:30 to +11:00 at 02:00 on 2026-10-04
        // (15:30 UTC the day before): 02:00-02:30 is skipped, so the hour
        // from 02:00 is half an hour long, and later hours start on the hour.
        let w = window("2026-10-04", "2026-10-04", "Australia/Lord_Howe");
        let labels = hours(&w);
        assert_eq!(labels.len(), 24);
        assert_eq!(
            labels[1..4],
            ["2026-10-04T01:00:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-04T03:00:00+11:00"]
        );
        assert_eq!(labels[23], "2026-10-04T23:00:00+11:00");
        let change = utc("2026-10-03T15:30:00Z");
        assert_eq!(w.key(Interval::Hour, change - 1) + 1, w.key(Interval::Hour, change));
        assert_eq!(w.key(Interval::Hour, change), w.key(Interval::Hour, utc("2026-10-03T15:59:59Z")));
        assert_eq!(w.key(Interval::Hour, utc("2026-10-03T16:00:00Z")), w.key(Interval::Hour, change) + 1);
        // And back at 02:00 on 2026-04-05 (15:00 UTC): 01:30-02:00 comes
        // twice, the second time as a half-hour bucket of its own.
        let w = window("2026-04-05", "2026-04-05", "Australia/Lord_Howe");
        let labels = hours(&w);
        assert_eq!(labels.len(), 25);
        assert_eq!(
            labels[1..4],
            ["2026-04-05T01:00:00+11:00", "2026-04-05T01:30:00+10:30", "2026-04-05T02:00:00+10:30"]
        );
        // The SQL keys what `key` keys.
        let sql = w.key_sql(Dialect::DuckDb, Interval::Hour, "t");
        assert_eq!(sql.matches(" WHEN t < ").count(), 1, "{sql}");
    }

    #[test]
    fn times_before_now_read_as_posthog_writes_them() {
        let utc = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis();
        let now = utc("2024-03-31T10:30:00Z");
        let from = |text: &str, tz: &str| Window::parse(Some(text), None, Some(tz), now).map(|w| w.from_ms);
        assert_eq!(from("-24h", "UTC").unwrap(), utc("2024-03-30T10:30:00Z"));
        assert_eq!(from("-7d", "UTC").unwrap(), utc("2024-03-24T00:00:00Z"), "whole days");
        assert_eq!(from("-0d", "UTC").unwrap(), utc("2024-03-31T00:00:00Z"));
        assert_eq!(from("-2w", "UTC").unwrap(), utc("2024-03-17T00:00:00Z"));
        assert_eq!(from("-1m", "UTC").unwrap(), utc("2024-02-29T00:00:00Z"), "calendar months, clamped");
        assert_eq!(from("-1y", "UTC").unwrap(), utc("2023-03-31T00:00:00Z"));
        // Local midnight: in Berlin, a week back from a summer-time Sunday
        // starts at 23:00 UTC the evening before.
        assert_eq!(from("-7d", "Europe/Berlin").unwrap(), utc("2024-03-23T23:00:00Z"));
        let w = Window::parse(Some("-3d"), Some("-1d"), None, now).unwrap();
        assert_eq!(
            (w.from_ms, w.to_ms),
            (utc("2024-03-28T00:00:00Z"), utc("2024-03-31T00:00:00Z")),
            "to yesterday's end"
        );
        let yesterday = Window::parse(Some("-1d"), Some("-1d"), None, now).unwrap();
        assert_eq!((yesterday.from_ms, yesterday.to_ms), (utc("2024-03-30T00:00:00Z"), utc("2024-03-31T00:00:00Z")));
        let hours = Window::parse(Some("-3h"), Some("-1h"), None, now).unwrap();
        assert_eq!(hours.to_ms, utc("2024-03-31T09:30:00Z"), "hours are exact");
        for bad in ["-7", "7d", "-d", "-7x", "--7d", "-7D", "-7dd", "-1.5d", "-99999999999y", "-é"] {
            let err = from(bad, "UTC").unwrap_err().to_string();
            assert!(err.contains("date_from") && err.contains("-7d"), "{bad}: {err}");
        }
        let err = from("-9999y", "UTC").unwrap_err().to_string();
        assert!(err.contains("1970"), "before the earliest time: {err}");
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_starts_when_its_clock_does() {
        let utc = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis();
        // Clocks jumped from 00:00 to 01:00 at the start of these days.
        let w = window("2018-11-04", "2018-11-04", "America/Sao_Paulo");
        assert_eq!(w.from_ms, utc("2018-11-04T03:00:00Z"));
        assert_eq!(w.to_ms, utc("2018-11-05T02:00:00Z"));
        assert_eq!(w.label(Interval::Day, w.keys(Interval::Day).unwrap()[0]), "2018-11-04T01:00:00-02:00");
        // East of Greenwich: Beirut went from +02:00 to +03:00 at midnight.
        let w = window("2024-03-30", "2024-03-31", "Asia/Beirut");
        assert_eq!(w.to_ms, utc("2024-03-31T21:00:00Z"));
        let w = window("2024-03-31", "2024-03-31", "Asia/Beirut");
        assert_eq!(w.from_ms, utc("2024-03-30T22:00:00Z"));
        assert_eq!(w.label(Interval::Day, w.keys(Interval::Day).unwrap()[0]), "2024-03-31T01:00:00+03:00");
        // Samoa skipped 2011-12-30 whole: the 29th and 30th are one day long.
        let w = window("2011-12-29", "2011-12-30", "Pacific/Apia");
        assert_eq!(w.to_ms - w.from_ms, 86_400_000);
    }

    #[test]
    fn a_day_the_zone_skipped_whole_is_no_bucket() {
        let w = window("2011-12-29", "2011-12-31", "Pacific/Apia");
        let keys = w.keys(Interval::Day).unwrap();
        let labels: Vec<String> = keys.iter().map(|&k| w.label(Interval::Day, k)).collect();
        assert_eq!(labels, ["2011-12-29T00:00:00-10:00", "2011-12-31T00:00:00+14:00"]);
        assert!(w.is_skipped(Interval::Day, keys[0] + 1) && !w.is_skipped(Interval::Hour, keys[0] + 1));
        // The day before the 31st is the 29th.
        let w = window("2011-12-31", "2011-12-31", "Pacific/Apia");
        let before = w.previous(Interval::Day);
        let keys = before.keys(Interval::Day).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(before.label(Interval::Day, keys[0]), "2011-12-29T00:00:00-10:00");
        assert_eq!(before.to_ms, w.from_ms);
        // A week of six days is compared with the six days before it, and
        // the week after with the seven before it, the skipped day left out.
        let w = window("2011-12-26", "2012-01-01", "Pacific/Apia");
        assert_eq!(w.keys(Interval::Day).unwrap().len(), 6);
        let before = w.previous(Interval::Day);
        assert_eq!(before.label(Interval::Day, before.keys(Interval::Day).unwrap()[0]), "2011-12-20T00:00:00-10:00");
        let w = window("2012-01-02", "2012-01-08", "Pacific/Apia");
        let before = w.previous(Interval::Day);
        let keys = before.keys(Interval::Day).unwrap();
        assert_eq!((keys.len(), before.label(Interval::Day, keys[0])), (7, "2011-12-25T00:00:00-10:00".to_owned()));
    }

    #[test]
    fn the_offset_case_switches_at_the_change() {
        let w = window("2024-03-30", "2024-04-01", "Europe/Berlin");
        let change = DateTime::parse_from_rfc3339("2024-03-31T01:00:00Z").unwrap().timestamp_millis();
        assert_eq!(w.local("t"), format!("(t + CASE WHEN t < {change} THEN 3600000 ELSE 7200000 END)"));
        assert_eq!(window("2024-03-30", "2024-04-01", "UTC").local("t"), "t");
    }

    #[test]
    fn weeks_start_on_monday_and_months_are_calendar_months() {
        let w = window("2024-01-01", "2024-12-31", "UTC");
        let monday = DateTime::parse_from_rfc3339("2024-01-08T00:00:00Z").unwrap().timestamp_millis();
        assert_eq!(w.key(Interval::Week, monday), w.key(Interval::Week, monday - 1) + 1);
        assert_eq!(w.label(Interval::Week, w.key(Interval::Week, monday)), "2024-01-08T00:00:00Z");
        assert_eq!(w.keys(Interval::Month).unwrap().len(), 12);
        assert_eq!(w.label(Interval::Month, w.keys(Interval::Month).unwrap()[1]), "2024-02-01T00:00:00Z");
    }

    #[test]
    fn bad_ranges_zones_and_bucket_counts_are_refused() {
        let err = |r: Result<Window, AnalyticsError>| match r {
            Err(AnalyticsError::InvalidQuery { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(err(Window::parse(Some("2024-02-01"), Some("2024-01-01"), None, 0)), "date_from");
        assert_eq!(err(Window::parse(Some("yesterday"), None, None, 0)), "date_from");
        assert_eq!(err(Window::parse(None, Some("2024-01-01"), Some("Mars/Olympus"), 0)), "timezone");
        // Only `date_to` given, too early: the error names it, not the
        // default `date_from`, which keeps as much of its week as it can.
        assert_eq!(err(Window::parse(None, Some("1970-01-01"), None, 0)), "date_to");
        assert_eq!(err(Window::parse(None, Some("-9999y"), None, 1_700_000_000_000)), "date_to");
        let w = Window::parse(None, Some("1970-01-05T00:00:00Z"), None, 0).unwrap();
        assert_eq!((w.from_ms, w.to_ms), (EARLIEST_MS, 4 * 86_400_000));
        let w = window("2000-01-01", "2024-01-01", "UTC");
        assert!(
            matches!(w.keys(Interval::Hour), Err(AnalyticsError::InvalidQuery { field, .. }) if field == "interval")
        );
    }
}
