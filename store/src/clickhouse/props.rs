//! Top-level properties as the parallel `prop_keys` / `prop_values` arrays
//! ClickHouse filters on: strings as themselves, numbers as DuckDB's
//! `json_extract_string` writes them (integers as their digits, however
//! many; floats by its rules, [`float_text`]), so both stores filter and
//! break down by the same text, arrays and objects as DuckDB writes them
//! (compact, an object's keys in their order, numbers as above), `null` as
//! not set, top-level keys sorted and each once, the last of a repeated key
//! winning. (DuckDB takes the first of a repeated top-level key: there the
//! two stores still differ.)
//!
//! Every stored event passes through here, so the common case borrows: keys
//! and string values without escapes point into the properties text, and
//! integers and booleans are their own compact text. Only other values
//! (floats, arrays, objects) are parsed and written back out.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The keys and values of `properties`, or none when it is not an object.
pub fn flatten(properties: &str) -> (Vec<Cow<'_, str>>, Vec<Cow<'_, str>>) {
    let Ok(Entries(mut entries)) = serde_json::from_str::<Entries>(properties) else {
        return (Vec::new(), Vec::new());
    };
    // A stable sort keeps repeats in input order: the last of each run wins.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut keys = Vec::with_capacity(entries.len());
    let mut values = Vec::with_capacity(entries.len());
    let mut entries = entries.into_iter().peekable();
    while let Some((key, raw)) = entries.next() {
        if entries.peek().is_some_and(|(next, _)| *next == key) {
            continue;
        }
        if let Some(value) = value_text(raw) {
            keys.push(key);
            values.push(value);
        }
    }
    (keys, values)
}

/// A value's stored text; `None` for `null`.
fn value_text(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Text>(text).ok().map(|t| t.0),
        Some(b'n') => None,
        Some(b't' | b'f') => Some(Cow::Borrowed(text)),
        // DuckDB keeps an integer's digits, however many (`-0` is 0).
        _ if is_integer(text) => Some(if text == "-0" { Cow::Borrowed("0") } else { Cow::Borrowed(text) }),
        Some(b'-' | b'0'..=b'9') => text.parse::<f64>().ok().map(|x| Cow::Owned(float_text(x))),
        _ => {
            let mut out = String::with_capacity(text.len());
            nested_text(raw, &mut out).map(|()| Cow::Owned(out))
        }
    }
}

/// An array's or object's text as DuckDB writes it: compact, an object's
/// keys in their order (not sorted, as a parse into a map would), strings
/// escaped as JSON needs and no more, numbers as [`value_text`] writes
/// them; `None` when it is not JSON.
fn nested_text(raw: &RawValue, out: &mut String) -> Option<()> {
    let text = raw.get();
    let quoted = |s: &str, out: &mut String| serde_json::to_string(s).ok().map(|q| out.push_str(&q));
    match text.as_bytes().first()? {
        b'{' => {
            out.push('{');
            for (i, (key, value)) in serde_json::from_str::<Entries>(text).ok()?.0.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                quoted(key, out)?;
                out.push(':');
                nested_text(value, out)?;
            }
            out.push('}');
        }
        b'[' => {
            out.push('[');
            for (i, item) in serde_json::from_str::<Vec<&RawValue>>(text).ok()?.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                nested_text(item, out)?;
            }
            out.push(']');
        }
        b'"' => quoted(&serde_json::from_str::<Text>(text).ok()?.0, out)?,
        b'n' => out.push_str("null"),
        _ => out.push_str(&value_text(raw)?),
    }
    Some(())
}

/// A float as DuckDB's JSON functions write it: the shortest digits that
/// read back the same, plainly from 1e-6 up to below 1e21 (`.0` after a
/// whole number), else as `1.5e21` or `1e-7`. A query's float goes to
/// ClickHouse as this text too: older servers read decimal text inexactly
/// (a digit off in the last place), the same text the same way, so a value
/// filtered by itself matches.
pub fn float_text(x: f64) -> String {
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    if !(-6..=20).contains(&exp) {
        return sci;
    }
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits = mantissa.replace('.', "");
    // Digits before the point.
    let point = exp + 1;
    if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{sign}{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        format!("{sign}{}.{}", &digits[..point as usize], &digits[point as usize..])
    }
}

/// A JSON integer: digits, maybe a minus, no fraction or exponent.
fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// An object's entries in order, repeats kept.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Entries<'de>, M::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<Text<'de>, &'de RawValue>()? {
                    entries.push((key.0, value));
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(Each)
    }
}

/// A JSON string, borrowed when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(Str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What the arrays held when every object was parsed whole: the oracle
    /// for all but numbers (DuckDB is theirs).
    fn through_value(properties: &str) -> (Vec<String>, Vec<String>) {
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(properties) else {
            return (Vec::new(), Vec::new());
        };
        map.into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .unzip()
    }

    #[test]
    fn matches_a_whole_parse_on_awkward_input() {
        let cases = [
            r#"{"step":3,"plan":"pro","amount":12.5,"currency":"EUR"}"#,
            r#"{ "b" : 1 , "a" : "x" , "b" : 2 }"#,
            r#"{"a":null,"b":"","c":false,"d":true}"#,
            r#"{"list":[ ],"one":[1]}"#,
            r#"{"esc\"aped":"line\nbreak \u00e9 \ud83d\ude00","tab\t":"\u0000"}"#,
            r#"{"dup":"first","dup":null}"#,
            r#"{"dup":null,"dup":"last"}"#,
            r#"{"ünï":"cödé","":"empty key"}"#,
            "{}",
            "[1,2]",
            "\"text\"",
            "17",
            "not json",
            r#"{"a":1"#,
            "",
        ];
        for case in cases {
            let (keys, values) = flatten(case);
            let keys: Vec<String> = keys.into_iter().map(Cow::into_owned).collect();
            let values: Vec<String> = values.into_iter().map(Cow::into_owned).collect();
            assert_eq!((keys, values), through_value(case), "{case}");
        }
    }

    /// DuckDB's text for each top-level value: what filters and breakdowns
    /// read on that store, which ClickHouse's must equal.
    fn duckdb_texts(properties: &str, keys: &[String]) -> Vec<Option<String>> {
        let conn = ::duckdb::Connection::open_in_memory().unwrap();
        keys.iter()
            .map(|k| {
                conn.query_row(
                    "SELECT json_extract_string(?, '$.' || json_quote(?)::VARCHAR)",
                    [properties, k.as_str()],
                    |r| r.get::<_, Option<String>>(0),
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn numbers_read_as_duckdb_reads_them() {
        let mut decades = Vec::new();
        for e in -12..26 {
            decades.extend([format!("\"a{e}\":1.5e{e}"), format!("\"b{e}\":-1e{e}"), format!("\"c{e}\":123.456e{e}")]);
        }
        let decades = format!("{{{}}}", decades.join(","));
        let cases = [
            decades.as_str(),
            r#"{"big":18446744073709551616,"huge":100000000000000000000,"neg":-9223372036854775809,"negz":-0}"#,
            r#"{"n":-0,"z":0,"neg":-17,"big":123456789012345678901234,"i64":9223372036854775807}"#,
            r#"{"f":1.50,"e":1e3,"E":-2.5E-3,"m":-0.0,"long":12345678901234567}"#,
            r#"{"a":123456789.123456789,"b":1e300,"c":0.1,"d":1.5e-7,"e":12.5,"f":1.0,"g":-2.5E-3,"h":1e20}"#,
            r#"{"i":5e-324,"j":1.7976931348623157e308,"k":1e21,"l":123456789012345678,"m":-0.0,"n":3.0e2}"#,
        ];
        for case in cases {
            let (keys, values) = flatten(case);
            let keys: Vec<String> = keys.into_iter().map(Cow::into_owned).collect();
            let values: Vec<Option<String>> = values.into_iter().map(|v| Some(v.into_owned())).collect();
            let expected = duckdb_texts(case, &keys);
            let pairs: Vec<_> = keys.iter().zip(values.iter().zip(&expected)).filter(|(_, (a, b))| a != b).collect();
            assert!(pairs.is_empty(), "{case}: ours vs DuckDB's {pairs:?}");
        }
    }

    #[test]
    fn arrays_and_objects_read_as_duckdb_writes_them() {
        let cases = [
            r#"{"meta":{"b":1,"a":2},"nums":[1e20,-0,0.1,1e21,12.50,1e-5]}"#,
            r#"{"nested":{"b":[1, 2, {"c" : null}],"a":"x"},"list":[ ],"empty":{}}"#,
            r#"{"text":["a\"b","line\nbreak","\u00e9\ud83d\ude00","tab\t","\u0001"],"flags":[true,false,null]}"#,
            r#"{"deep":[[[{"z":{"y":[-17,18446744073709551616,3.0e2]}}]]]}"#,
        ];
        for case in cases {
            let (keys, values) = flatten(case);
            let keys: Vec<String> = keys.into_iter().map(Cow::into_owned).collect();
            let values: Vec<Option<String>> = values.into_iter().map(|v| Some(v.into_owned())).collect();
            assert_eq!(values, duckdb_texts(case, &keys), "{case}");
        }
    }

    #[test]
    fn plain_text_is_borrowed_not_copied() {
        let text = r#"{"plan":"pro","step":3,"ok":true}"#;
        let (keys, values) = flatten(text);
        assert!(keys.iter().chain(&values).all(|c| matches!(c, Cow::Borrowed(_))));
        assert_eq!(values, ["true", "pro", "3"]);
    }
}
