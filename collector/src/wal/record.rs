//! One log record on disk: `len: u32 LE | check: u32 LE | payload`, where
//! the payload is a format version byte and then one acknowledged request's
//! events and person updates, encoded with postcard (compact, no field
//! names, fast to decode). postcard has no field names, so a change to
//! `Event` needs a new format version and a decoder for the old one: a log
//! written by one release must replay under the next (not the other way:
//! an older build reads a newer record as torn).
//!
//! The check is the payload's crc32 sealed with the record's log position
//! ([`seal`]): segment files are reused once delivered, and a record left
//! from a file's earlier use sits at a position it was not written for, so
//! it reads as torn rather than as a record. Format 1 records, written
//! before files were reused, carry the crc alone.
//!
//! A record is written whole or, after a crash mid-write, found torn: a short
//! header, a short payload or a check that does not match. Recovery cuts
//! the log at the first torn record, which was never acknowledged, unless
//! whole records follow it: then the disk damaged it, and delivery sets its
//! bytes aside and goes on from the next record sealed to its own position
//! ([`whole_at`]).

use leanloop_core::{Event, UserUpdate};
use serde::{Deserialize, Serialize};
use std::io::{self, Read};

pub const HEADER_BYTES: usize = 8;

/// The payload encoding this build writes.
const FORMAT: u8 = 2;
/// The same payload with an unsealed check; still read.
const FORMAT_UNSEALED: u8 = 1;

/// Largest payload a reader accepts; a length above it is a torn header, not
/// an allocation to attempt. Requests are capped far below this.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

#[derive(Serialize)]
struct BatchRef<'a> {
    events: &'a [Event],
    users: &'a [UserUpdate],
}

/// What one record holds.
#[derive(Debug, Default, Deserialize)]
pub struct Batch {
    pub events: Vec<Event>,
    pub users: Vec<UserUpdate>,
}

/// Most a record reserves up front; a larger one grows as it is written.
/// The estimate per item is capped too, but the events a request may carry
/// are configurable.
const MAX_ESTIMATE_BYTES: usize = 4 << 20;

thread_local! {
    /// Bytes per event or person update in the last record this thread encoded.
    static ITEM_BYTES: std::cell::Cell<usize> = const { std::cell::Cell::new(512) };
}

/// Encodes a record, header included, to be [`seal`]ed with its position.
pub fn encode(events: &[Event], users: &[UserUpdate]) -> Result<Vec<u8>, postcard::Error> {
    let batch = BatchRef { events, users };
    // Sized up front from the size per item of this thread's last record:
    // grown as written, a request's record was copied a dozen times, and
    // measuring it exactly first took a second full pass over the events.
    let items = events.len() + users.len();
    let estimate = (ITEM_BYTES.get() * items * 5 / 4).min(MAX_ESTIMATE_BYTES);
    let mut start = Vec::with_capacity(HEADER_BYTES + 1 + estimate);
    start.extend_from_slice(&[0u8; HEADER_BYTES]);
    start.push(FORMAT);
    let mut record = postcard::to_extend(&batch, start)?;
    // Capped: one large event must not make the next thousand small ones
    // reserve megabytes.
    ITEM_BYTES.set((record.len() / items.max(1)).clamp(1, 2048));
    let payload_len = (record.len() - HEADER_BYTES) as u32;
    let crc = crc32fast::hash(&record[HEADER_BYTES..]);
    record[..4].copy_from_slice(&payload_len.to_le_bytes());
    record[4..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(record)
}

/// Binds a record encoded by [`encode`] to the log position it is written at.
pub fn seal(record: &mut [u8], position: u64) {
    let check = u32::from_le_bytes(record[4..HEADER_BYTES].try_into().expect("4 bytes")) ^ position_mask(position);
    record[4..HEADER_BYTES].copy_from_slice(&check.to_le_bytes());
}

/// 32 bits that differ between two positions but for a 2^-32 chance.
fn position_mask(position: u64) -> u32 {
    let mixed = position.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 32) as u32 ^ mixed as u32
}

/// The next record of a segment.
pub enum Next {
    /// A whole record with a matching checksum: its payload and its size on disk.
    Record(Vec<u8>, u64),
    /// Clean end of the data.
    End,
    /// A partial or corrupt record starts here.
    Torn,
}

/// Reads the record expected at log position `position`.
pub fn read_next(reader: &mut impl Read, position: u64) -> io::Result<Next> {
    let mut header = [0u8; HEADER_BYTES];
    match read_full(reader, &mut header)? {
        0 => return Ok(Next::End),
        n if n < HEADER_BYTES => return Ok(Next::Torn),
        _ => {}
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let check = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    // No record is empty (the format byte comes first): zeros are what a
    // crash can leave where the file grew but its data never reached disk.
    if len == 0 || len > MAX_PAYLOAD_BYTES {
        return Ok(Next::Torn);
    }
    let mut payload = vec![0u8; len];
    if read_full(reader, &mut payload)? < len {
        return Ok(Next::Torn);
    }
    if !checks(&payload, check, position) {
        return Ok(Next::Torn);
    }
    Ok(Next::Record(payload, (HEADER_BYTES + len) as u64))
}

/// Whether `payload` matches the `check` of a record written at `position`.
fn checks(payload: &[u8], check: u32, position: u64) -> bool {
    let crc = crc32fast::hash(payload);
    match payload[0] {
        FORMAT_UNSEALED => crc == check,
        _ => crc ^ position_mask(position) == check,
    }
}

/// The size of the whole record `bytes` start with, if they start with one
/// written at `position`. Finding where records resume after damage tries
/// every offset: a length past the bytes or a format byte no build wrote
/// rules most out before their checksum is computed.
pub fn whole_at(bytes: &[u8], position: u64) -> Option<u64> {
    let header = bytes.get(..HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > MAX_PAYLOAD_BYTES {
        return None;
    }
    let payload = bytes.get(HEADER_BYTES..HEADER_BYTES + len)?;
    if !(FORMAT_UNSEALED..=FORMAT + 8).contains(&payload[0]) {
        return None;
    }
    let check = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    checks(payload, check, position).then_some((HEADER_BYTES + len) as u64)
}

pub fn decode(payload: &[u8]) -> Result<Batch, String> {
    match payload.split_first() {
        Some((&(FORMAT | FORMAT_UNSEALED), rest)) => {
            postcard::from_bytes(rest).map_err(|e| format!("undecodable record: {e}"))
        }
        Some((other, _)) => Err(format!("record format {other} is unknown to this build (written by a newer one?)")),
        None => Err("empty record".into()),
    }
}

/// Reads until `buf` is full or the data ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use leanloop_core::EventKind;

    pub fn event(n: u128) -> Event {
        let mut event = Event::new(uuid::Uuid::from_u128(n), 1, EventKind::Track, format!("e{n}"), 1_700_000_000_000);
        event.anonymous_id = Some("anon".into());
        event.release = Some("1.0".into());
        event.properties = r#"{"plan":"pro"}"#.into();
        event
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let events = vec![event(1), event(2)];
        let users = vec![UserUpdate {
            project_id: 1,
            user_id: "u".into(),
            anonymous_id: None,
            traits: "{}".into(),
            traits_once: r#"{"first":"yes"}"#.into(),
            seen_at_ms: 5,
        }];
        let at = 4096 * 7 + 13;
        let mut record = encode(&events, &users).unwrap();
        seal(&mut record, at);
        let read = |bytes: &[u8], position: u64| read_next(&mut &bytes[..], position).unwrap();
        let Next::Record(payload, size) = read(&record, at) else { panic!("whole record") };
        assert_eq!(size as usize, record.len());
        let batch = decode(&payload).unwrap();
        assert_eq!((batch.events, batch.users), (events, users));

        assert!(matches!(read(&record[..record.len() - 1], at), Next::Torn));
        assert!(matches!(read(&record[..3], at), Next::Torn));
        let mut newer = payload.clone();
        newer[0] = FORMAT + 1;
        assert!(decode(&newer).unwrap_err().contains("format"));
        let mut flipped = record.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(read(&flipped, at), Next::Torn));
        assert!(matches!(read(&[], at), Next::End));
        assert!(matches!(read(&[0u8; 64], at), Next::Torn), "a zeroed tail is torn, not records");
    }

    #[test]
    fn one_large_event_does_not_make_the_next_records_reserve_its_size_per_event() {
        let mut large = event(1);
        large.properties = format!(r#"{{"blob":"{}"}}"#, "x".repeat(30_000));
        let record = encode(std::slice::from_ref(&large), &[]).unwrap();
        assert!(record.len() > 30_000);
        let small: Vec<Event> = (0..1000).map(event).collect();
        let record = encode(&small, &[]).unwrap();
        // At most the capped estimate (2 KiB and a quarter per event), not
        // the 30 KB the large one took.
        assert!(record.capacity() <= HEADER_BYTES + 1 + 2560 * 1000, "reserved {}", record.capacity());
        let Next::Record(payload, _) = read_next(&mut &sealed(record)[..], 0).unwrap() else { panic!("whole") };
        assert_eq!(decode(&payload).unwrap().events, small);
        // Estimated from the last record, the next of the same shape fits.
        let again = encode(&small, &[]).unwrap();
        assert!(again.capacity() < 2 * again.len(), "reserved {} for {}", again.capacity(), again.len());
        // However many events a record holds, it reserves at most 4 MiB
        // before it grows as written.
        encode(std::slice::from_ref(&large), &[]).unwrap();
        let many: Vec<Event> = (0..3000).map(event).collect();
        let bulk = encode(&many, &[]).unwrap();
        assert!(bulk.capacity() <= HEADER_BYTES + 1 + MAX_ESTIMATE_BYTES, "reserved {}", bulk.capacity());
    }

    fn sealed(mut record: Vec<u8>) -> Vec<u8> {
        seal(&mut record, 0);
        record
    }

    #[test]
    fn a_record_reads_only_at_the_position_it_was_sealed_for() {
        let mut record = encode(&[event(1)], &[]).unwrap();
        seal(&mut record, 1 << 26);
        // Where a reused segment file left it, one segment or any other
        // distance away from where it is now read.
        for elsewhere in [0, 1, 1 << 20, (1 << 26) - 1, (1 << 26) + 1, 2 << 26, 3 << 26, u64::MAX] {
            assert!(matches!(read_next(&mut &record[..], elsewhere).unwrap(), Next::Torn), "read at {elsewhere}");
        }
        assert!(matches!(read_next(&mut &record[..], 1 << 26).unwrap(), Next::Record(..)));
    }

    #[test]
    fn unsealed_records_of_the_first_format_still_replay() {
        // Format 1: the payload's crc alone, as builds before sealing wrote it.
        let mut record = encode(&[event(1)], &[]).unwrap();
        record[HEADER_BYTES] = FORMAT_UNSEALED;
        let crc = crc32fast::hash(&record[HEADER_BYTES..]);
        record[4..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        for position in [0, 12_345, 1 << 40] {
            let Next::Record(payload, _) = read_next(&mut &record[..], position).unwrap() else { panic!("whole") };
            assert_eq!(decode(&payload).unwrap().events, vec![event(1)]);
        }
    }
}
