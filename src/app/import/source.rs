//! Reading an import's input (docs/SPEC.md §13.1): records in file order, each with
//! its line number, parsed into an order or the reason it is rejected, and the
//! SHA-256 of every byte consumed so far, so that a committed point can be found
//! again in the same input.

use std::io::{self, BufRead, Read};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::json as strict_json;
use crate::domain::json::{json_kind, parse_fields};
use crate::domain::{Email, IdentifyRequest, Phone};

/// Bytes of the input that identify it for `--resume`.
pub const FINGERPRINT_BYTES: usize = 64 * 1024;

/// A record longer than this is rejected without being held in memory.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        }
    }

    /// From the file's extension; NDJSON when it says nothing.
    pub fn of_path(path: &str) -> Format {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".csv") || lower.ends_with(".csv.txt") {
            Format::Csv
        } else {
            Format::Ndjson
        }
    }
}

/// One order of the input.
#[derive(Debug, Clone)]
pub struct Order {
    /// The line it starts on, from 1.
    pub line: u64,
    /// The record as given (lossily decoded), for the rejects file.
    pub text: String,
    pub parsed: Result<Parsed, String>,
}

#[derive(Debug, Clone)]
pub struct Parsed {
    pub request: IdentifyRequest,
    pub ordered_at: Option<DateTime<Utc>>,
}

/// The input's first bytes (to fingerprint it) and a reader that still yields them.
pub fn fingerprint(mut input: impl Read) -> io::Result<(String, Vec<u8>, impl Read)> {
    let mut head = Vec::with_capacity(FINGERPRINT_BYTES);
    (&mut input)
        .take(FINGERPRINT_BYTES as u64)
        .read_to_end(&mut head)?;
    let digest = hex(&Sha256::digest(&head));
    let replay = io::Cursor::new(head.clone()).chain(input);
    Ok((digest, head, replay))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The SHA-256 of no bytes: an import's committed point before its first chunk.
pub fn empty_prefix() -> String {
    hex(&Sha256::digest([]))
}

/// A point in the input: lines and bytes consumed, and their hash so far.
#[derive(Debug, Clone)]
pub struct Position {
    pub lines: u64,
    pub bytes: u64,
    hasher: Sha256,
}

impl Position {
    pub fn sha256(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }
}

/// Records of the input, with the running position and hash.
pub struct Records<R> {
    input: R,
    format: Format,
    hasher: Sha256,
    bytes: u64,
    lines: u64,
    /// The CSV header's column of each field, once read.
    columns: Option<Columns>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Columns {
    email: Option<usize>,
    phone: Option<usize>,
    ordered_at: Option<usize>,
}

impl<R: BufRead> Records<R> {
    pub fn new(input: R, format: Format) -> Self {
        Self {
            input,
            format,
            hasher: Sha256::new(),
            bytes: 0,
            lines: 0,
            columns: None,
        }
    }

    /// Lines consumed so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Bytes consumed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The SHA-256 of the bytes consumed so far.
    pub fn prefix_sha256(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }

    /// Where the input stands now: the committed point a chunk ending here records.
    pub fn position(&self) -> Position {
        Position {
            lines: self.lines,
            bytes: self.bytes,
            hasher: self.hasher.clone(),
        }
    }

    /// Consumes the records up to `bytes` (a committed point) without parsing them,
    /// and says whether they end exactly there with the same hash.
    pub fn skip_to(&mut self, bytes: u64, lines: u64, sha256: &str) -> io::Result<bool> {
        if self.format == Format::Csv && bytes > 0 && self.read_header()?.is_err() {
            return Ok(false);
        }
        while self.bytes < bytes {
            if self.raw_record()?.is_none() {
                break;
            }
        }
        Ok(self.bytes == bytes && self.lines == lines && self.prefix_sha256() == sha256)
    }

    /// The next order, or `None` at the end of the input; blank lines are skipped.
    pub fn next_order(&mut self) -> io::Result<Option<Order>> {
        if self.format == Format::Csv
            && self.columns.is_none()
            && let Err(reason) = self.read_header()?
        {
            return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
        }
        loop {
            let Some((line, record)) = self.raw_record()? else {
                return Ok(None);
            };
            let record = match record {
                Ok(record) => record,
                Err(reason) => {
                    return Ok(Some(Order {
                        line,
                        text: String::new(),
                        parsed: Err(reason),
                    }));
                }
            };
            if record.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let (text, parsed) = match self.format {
                Format::Ndjson => (
                    String::from_utf8_lossy(&record).into_owned(),
                    parse_json(&record),
                ),
                Format::Csv => match String::from_utf8(record) {
                    Ok(text) => {
                        let parsed = self.parse_csv(&text);
                        (text, parsed)
                    }
                    // Decoded leniently, two different names would become one.
                    Err(err) => (
                        String::from_utf8_lossy(err.as_bytes()).into_owned(),
                        Err("not valid UTF-8: the input must be UTF-8".to_owned()),
                    ),
                },
            };
            return Ok(Some(Order { line, text, parsed }));
        }
    }

    /// Reads the CSV header (the first non-blank record).
    fn read_header(&mut self) -> io::Result<Result<(), String>> {
        loop {
            let Some((line, record)) = self.raw_record()? else {
                return Ok(Err(
                    "the CSV input is empty: it needs a header line".to_owned()
                ));
            };
            let record = match record {
                Ok(record) => record,
                Err(reason) => return Ok(Err(format!("line {line}: {reason}"))),
            };
            if record.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let text = String::from_utf8_lossy(&record);
            let fields = match split_csv(&text) {
                Ok(fields) => fields,
                Err(reason) => return Ok(Err(format!("line {line}: {reason}"))),
            };
            let mut columns = Columns::default();
            for (index, name) in fields.iter().enumerate() {
                let slot = match name.trim().trim_start_matches('\u{feff}') {
                    "email" => &mut columns.email,
                    "phoneNumber" | "phone_number" | "phone" => &mut columns.phone,
                    "orderedAt" | "ordered_at" => &mut columns.ordered_at,
                    _ => continue,
                };
                if slot.is_some() {
                    return Ok(Err(format!(
                        "line {line}: the CSV header names the column `{}` twice",
                        name.trim()
                    )));
                }
                *slot = Some(index);
            }
            if columns.email.is_none() && columns.phone.is_none() {
                return Ok(Err(format!(
                    "line {line}: the CSV header must name an `email` or a `phoneNumber` \
                     column (and optionally `orderedAt`), got `{}`",
                    text.trim()
                )));
            }
            self.columns = Some(columns);
            return Ok(Ok(()));
        }
    }

    fn parse_csv(&self, text: &str) -> Result<Parsed, String> {
        let columns = self.columns.unwrap_or_default();
        let fields = split_csv(text)?;
        let field = |index: Option<usize>| {
            index
                .and_then(|index| fields.get(index))
                .map(String::as_str)
                .filter(|value| !value.trim().is_empty())
        };
        let email = field(columns.email)
            .map(Email::parse)
            .transpose()
            .map_err(|err| err.to_string())?
            .flatten();
        let phone = field(columns.phone)
            .map(Phone::parse)
            .transpose()
            .map_err(|err| err.to_string())?
            .flatten();
        let request = IdentifyRequest::new(email, phone).map_err(|err| err.to_string())?;
        let ordered_at = field(columns.ordered_at).map(parse_time).transpose()?;
        Ok(Parsed {
            request,
            ordered_at,
        })
    }

    /// The next record's bytes (several lines for a CSV record with a quoted line
    /// break), without its line ending, and the line it starts on.
    #[allow(clippy::type_complexity)]
    fn raw_record(&mut self) -> io::Result<Option<(u64, Result<Vec<u8>, String>)>> {
        let mut record = Vec::new();
        let start = self.lines + 1;
        let mut too_long = false;
        loop {
            let before = record.len();
            let ended = self.read_line(&mut record, &mut too_long)?;
            if record.len() == before && !ended && before == 0 && !too_long {
                return Ok(None);
            }
            let open_quote = self.format == Format::Csv && !too_long && ends_in_quotes(&record);
            if !(ended && open_quote) {
                break;
            }
        }
        while matches!(record.last(), Some(b'\n' | b'\r')) {
            record.pop();
        }
        if start == 1 && record.starts_with(BOM) {
            record.drain(..BOM.len());
        }
        if too_long {
            return Ok(Some((
                start,
                Err(format!("longer than {MAX_RECORD_BYTES} bytes")),
            )));
        }
        Ok(Some((start, Ok(record))))
    }

    /// Appends one line (with its `\n`) to `record`, hashing and counting it; past
    /// `MAX_RECORD_BYTES` the rest of the line is consumed but not kept. Says
    /// whether the line ended with `\n` (rather than the input).
    fn read_line(&mut self, record: &mut Vec<u8>, too_long: &mut bool) -> io::Result<bool> {
        let mut counted = false;
        loop {
            let buffer = self.input.fill_buf()?;
            if buffer.is_empty() {
                return Ok(false);
            }
            if !counted {
                self.lines += 1;
                counted = true;
            }
            let (piece, ended) = match buffer.iter().position(|byte| *byte == b'\n') {
                Some(end) => (&buffer[..=end], true),
                None => (buffer, false),
            };
            self.hasher.update(piece);
            self.bytes += piece.len() as u64;
            if !*too_long {
                if record.len() + piece.len() > MAX_RECORD_BYTES + 2 {
                    *too_long = true;
                    record.clear();
                } else {
                    record.extend_from_slice(piece);
                }
            }
            let used = piece.len();
            self.input.consume(used);
            if ended {
                return Ok(true);
            }
        }
    }
}

/// The UTF-8 byte order mark some tools put first.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Whether a CSV record ends inside a quoted field. As RFC 4180 reads: only a
/// quote that opens a field (after blanks) opens a quoted field, and inside one a
/// doubled quote is a quote; a stray quote elsewhere leaves the line one record
/// (which `split_csv` then refuses).
fn ends_in_quotes(record: &[u8]) -> bool {
    let mut quoted = false;
    let mut at_field_start = true;
    let mut at = 0;
    while at < record.len() {
        let byte = record[at];
        at += 1;
        if quoted {
            if byte == b'"' {
                if record.get(at) == Some(&b'"') {
                    at += 1;
                } else {
                    quoted = false;
                }
            }
            continue;
        }
        match byte {
            b',' => at_field_start = true,
            b' ' | b'\t' if at_field_start => {}
            b'"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            _ => at_field_start = false,
        }
    }
    quoted
}

fn parse_json(record: &[u8]) -> Result<Parsed, String> {
    let value =
        strict_json::from_slice(record).map_err(|err| match strict_json::duplicated_key(&err) {
            Some(key) => format!("{key} is given more than once; give each field once"),
            None => format!("not valid JSON: {err}"),
        })?;
    let Value::Object(fields) = value else {
        return Err(format!(
            "an order must be a JSON object, got {}",
            json_kind(&value)
        ));
    };
    let request = parse_fields(&fields).map_err(|err| err.to_string())?;
    let ordered_at = match fields.get("orderedAt") {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Some(parse_time(raw)?),
        Some(other) => {
            return Err(format!(
                "orderedAt must be an RFC 3339 timestamp string or null, got {}",
                json_kind(other)
            ));
        }
    };
    Ok(Parsed {
        request,
        ordered_at,
    })
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|at| at.with_timezone(&Utc))
        .map_err(|err| {
            format!(
                "orderedAt `{raw}` is not an RFC 3339 timestamp ({err}), like 2024-05-01T12:00:00Z"
            )
        })
}

/// Splits one CSV record (RFC 4180: comma-separated, fields optionally in double
/// quotes, a quote inside one doubled).
fn split_csv(record: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = record.chars().peekable();
    let mut quoted = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    quoted = false;
                    match chars.peek() {
                        None | Some(',') => {}
                        Some(_) => {
                            return Err("a quoted CSV field must end at a comma or the line's end"
                                .to_owned());
                        }
                    }
                }
                other => field.push(other),
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
                continue;
            }
            '"' if at_field_start && field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            '"' => return Err("a quote inside an unquoted CSV field".to_owned()),
            other => field.push(other),
        }
        at_field_start = false;
    }
    if quoted {
        return Err("a quoted CSV field is not closed".to_owned());
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders(input: &str, format: Format) -> Vec<(u64, Result<String, String>)> {
        let mut records = Records::new(input.as_bytes(), format);
        let mut out = Vec::new();
        while let Some(order) = records.next_order().unwrap() {
            out.push((
                order.line,
                order.parsed.map(|parsed| {
                    format!(
                        "{:?}/{:?}/{:?}",
                        parsed.request.email().map(Email::as_str),
                        parsed.request.phone().map(Phone::as_str),
                        parsed.ordered_at.map(|at| at.to_rfc3339())
                    )
                }),
            ));
        }
        out
    }

    #[test]
    fn ndjson_lines_parse_as_request_bodies_do() {
        let input = "{\"email\":\"A@x.io\",\"phoneNumber\":123}\n\n\
                     {\"phoneNumber\":\"+1 (555) 000\",\"orderedAt\":\"2024-01-02T03:04:05+01:00\"}\n\
                     {\"email\":\"a@x.io\",\"email\":\"b@x.io\"}\n\
                     [1]\n\
                     {\"email\":\"a@x.io\",\"orderedAt\":\"yesterday\"}\n\
                     {}";
        let got = orders(input, Format::Ndjson);
        assert_eq!(
            got[0],
            (1, Ok("Some(\"a@x.io\")/Some(\"123\")/None".to_owned()))
        );
        assert_eq!(
            got[1],
            (
                3,
                Ok("None/Some(\"+1555000\")/Some(\"2024-01-02T02:04:05+00:00\")".to_owned())
            )
        );
        assert!(
            got[2].1.as_ref().unwrap_err().contains("more than once"),
            "{got:?}"
        );
        assert!(
            got[3].1.as_ref().unwrap_err().contains("JSON object"),
            "{got:?}"
        );
        assert!(
            got[4].1.as_ref().unwrap_err().contains("RFC 3339"),
            "{got:?}"
        );
        assert_eq!(got[5].0, 7);
        assert!(got[5].1.is_err());
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn csv_follows_its_header_and_rfc_4180_quoting() {
        let input = "orderedAt,phoneNumber,email,note\r\n\
                     2024-01-01T00:00:00Z,555,a@x.io,hi\r\n\
                     ,,\"b@x.io\",\"two\nlines\"\r\n\
                     ,\"5\"\"5\",,\r\n\
                     ,,,\r\n";
        let got = orders(input, Format::Csv);
        assert_eq!(
            got[0],
            (
                2,
                Ok("Some(\"a@x.io\")/Some(\"555\")/Some(\"2024-01-01T00:00:00+00:00\")".to_owned())
            )
        );
        assert_eq!(got[1], (3, Ok("Some(\"b@x.io\")/None/None".to_owned())));
        assert_eq!(got[2].0, 5);
        assert!(got[2].1.is_err());
        assert!(got[3].1.is_err(), "no value: {got:?}");
        assert_eq!(got.len(), 4);
        let mut headless = Records::new("a@x.io,555\n".as_bytes(), Format::Csv);
        assert!(headless.next_order().is_err());
    }

    #[test]
    fn a_committed_point_is_found_again_only_in_the_same_bytes() {
        let input = "{\"email\":\"a@x.io\"}\n{\"email\":\"b@x.io\"}\n{\"email\":\"c@x.io\"}\n";
        let mut records = Records::new(input.as_bytes(), Format::Ndjson);
        records.next_order().unwrap();
        records.next_order().unwrap();
        let (bytes, lines, hash) = (records.bytes(), records.lines(), records.prefix_sha256());
        let mut again = Records::new(input.as_bytes(), Format::Ndjson);
        assert!(again.skip_to(bytes, lines, &hash).unwrap());
        assert_eq!(again.next_order().unwrap().unwrap().line, 3);
        let changed = input.replace("b@x.io", "B@x.io");
        let mut other = Records::new(changed.as_bytes(), Format::Ndjson);
        assert!(!other.skip_to(bytes, lines, &hash).unwrap());
    }

    #[test]
    fn a_stray_quote_spoils_one_csv_line_not_the_next_ones() {
        let input = "email,note\na@x.io,5\" screen\nb@x.io,ok\n\"c@x.io\",\"two\nlines\"\n";
        let got = orders(input, Format::Csv);
        assert_eq!(got[0].0, 2);
        assert!(got[0].1.is_err(), "{got:?}");
        assert_eq!(got[1], (3, Ok("Some(\"b@x.io\")/None/None".to_owned())));
        assert_eq!(got[2], (4, Ok("Some(\"c@x.io\")/None/None".to_owned())));
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn csv_must_be_utf8_and_a_byte_order_mark_is_skipped() {
        let mut input = b"\xEF\xBB\xBFemail\njos\xE9@x.io\njos\xE8@x.io\n".to_vec();
        let mut records = Records::new(input.as_slice(), Format::Csv);
        let first = records.next_order().unwrap().unwrap();
        assert!(first.parsed.unwrap_err().contains("UTF-8"));
        assert!(records.next_order().unwrap().unwrap().parsed.is_err());
        input = b"\xEF\xBB\xBF{\"email\":\"a@x.io\"}\n".to_vec();
        let got = orders(std::str::from_utf8(&input).unwrap(), Format::Ndjson);
        assert_eq!(got[0], (1, Ok("Some(\"a@x.io\")/None/None".to_owned())));
    }

    #[test]
    fn an_overlong_line_is_rejected_and_the_next_one_read() {
        let input = format!(
            "{}\n{{\"email\":\"a@x.io\"}}\n",
            "x".repeat(MAX_RECORD_BYTES * 3)
        );
        let got = orders(&input, Format::Ndjson);
        assert!(got[0].1.as_ref().unwrap_err().contains("longer than"));
        assert_eq!(got[1], (2, Ok("Some(\"a@x.io\")/None/None".to_owned())));
    }
}
