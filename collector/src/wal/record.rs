//! One log record on disk: `len: u32 LE | crc32(payload): u32 LE | payload`,
//! where the payload is a format version byte and then one acknowledged
//! request's events and person updates, encoded with postcard (compact, no
//! field names, fast to decode). postcard has no field names, so a change to
//! `Event` needs a new format version and a decoder for the old one: a log
//! written by one release must replay under the next.
//!
//! A record is written whole or, after a crash mid-write, found torn: a short
//! header, a short payload or a checksum that does not match. Recovery cuts
//! the log at the first torn record, which was never acknowledged.

use leanloop_core::{Event, UserUpdate};
use serde::{Deserialize, Serialize};
use std::io::{self, Read};

pub const HEADER_BYTES: usize = 8;

/// The payload encoding this build writes (and the only one it reads).
const FORMAT: u8 = 1;

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

/// Encodes a record, header included.
pub fn encode(events: &[Event], users: &[UserUpdate]) -> Result<Vec<u8>, postcard::Error> {
    let mut start = vec![0u8; HEADER_BYTES];
    start.push(FORMAT);
    let mut record = postcard::to_extend(&BatchRef { events, users }, start)?;
    let payload_len = (record.len() - HEADER_BYTES) as u32;
    let crc = crc32fast::hash(&record[HEADER_BYTES..]);
    record[..4].copy_from_slice(&payload_len.to_le_bytes());
    record[4..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(record)
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

pub fn read_next(reader: &mut impl Read) -> io::Result<Next> {
    let mut header = [0u8; HEADER_BYTES];
    match read_full(reader, &mut header)? {
        0 => return Ok(Next::End),
        n if n < HEADER_BYTES => return Ok(Next::Torn),
        _ => {}
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    // No record is empty (the format byte comes first): zeros are what a
    // crash can leave where the file grew but its data never reached disk.
    if len == 0 || len > MAX_PAYLOAD_BYTES {
        return Ok(Next::Torn);
    }
    let mut payload = vec![0u8; len];
    if read_full(reader, &mut payload)? < len || crc32fast::hash(&payload) != crc {
        return Ok(Next::Torn);
    }
    Ok(Next::Record(payload, (HEADER_BYTES + len) as u64))
}

pub fn decode(payload: &[u8]) -> Result<Batch, String> {
    match payload.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| format!("undecodable record: {e}")),
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
        let record = encode(&events, &users).unwrap();
        let Next::Record(payload, size) = read_next(&mut &record[..]).unwrap() else { panic!("whole record") };
        assert_eq!(size as usize, record.len());
        let batch = decode(&payload).unwrap();
        assert_eq!((batch.events, batch.users), (events, users));

        assert!(matches!(read_next(&mut &record[..record.len() - 1]).unwrap(), Next::Torn));
        assert!(matches!(read_next(&mut &record[..3]).unwrap(), Next::Torn));
        let mut newer = payload.clone();
        newer[0] = FORMAT + 1;
        assert!(decode(&newer).unwrap_err().contains("format"));
        let mut flipped = record.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(read_next(&mut &flipped[..]).unwrap(), Next::Torn));
        assert!(matches!(read_next(&mut &[][..]).unwrap(), Next::End));
        assert!(matches!(read_next(&mut &[0u8; 64][..]).unwrap(), Next::Torn), "a zeroed tail is torn, not records");
    }
}
