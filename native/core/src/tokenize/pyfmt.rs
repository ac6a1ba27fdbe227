//! Python's textual forms of template values, so that chat templates render
//! what jinja2 renders:
//! - [`py_str`] is `str(x)` (what `{{ x }}`, `|string`, `|join` and `|trim` print):
//!   `None`, `True`/`False`, floats as `repr`, lists/dicts as Python `repr`;
//! - [`py_repr`] is `repr(x)` (tuples, see [`PyTuple`], print as `(a, b)`);
//! - [`float_repr`] is `float.__repr__` (shortest round-trip digits, exponent form
//!   below 1e-4 and from 1e16 on: `1e-05`, `1e+16`, `1.0`);
//! - [`json_dumps`] is `json.dumps(x, ensure_ascii=..., indent=..., separators=...,
//!   sort_keys=...)` as transformers' `tojson` filter calls it (no HTML escaping,
//!   key order kept, `", "`/`": "` separators, `","` as item separator when
//!   indenting).
//!
//! Failure modes mirror Python's: values JSON cannot express (undefined, bytes,
//! iterators, objects) are a `TypeError`-like template error. Known gap: `repr`
//! decides "printable" from a built-in approximation of Unicode categories (C0/C1
//! controls, format characters, separators other than the space, private use), not
//! the full Unicode database, so a rare unassigned code point prints raw where
//! Python would escape it.

use std::fmt::Write;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// A Python tuple (a sequence that prints as `(a, b)`).
#[derive(Debug)]
pub struct PyTuple(pub Vec<Value>);

impl Object for PyTuple {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let i = key.as_i64()?;
        let n = self.0.len() as i64;
        let i = if i < 0 { i + n } else { i };
        self.0.get(usize::try_from(i).ok()?).cloned()
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.0.len())
    }
}

/// `float.__repr__`.
pub fn float_repr(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("nan");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "inf" } else { "-inf" });
        return;
    }
    if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

fn push_number(v: &Value, out: &mut String) {
    if v.is_integer() {
        let _ = write!(out, "{v}");
    } else {
        float_repr(f64::try_from(v.clone()).unwrap_or(f64::NAN), out);
    }
}

/// `str(x)` as jinja2 prints it (undefined prints as nothing).
pub fn py_str(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::String => out.push_str(v.as_str().unwrap_or_default()),
        ValueKind::None | ValueKind::Bool | ValueKind::Number | ValueKind::Seq | ValueKind::Map => {
            py_repr(v, out)
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

/// `str(x)` into a fresh string.
pub fn to_py_str(v: &Value) -> String {
    let mut s = String::new();
    py_str(v, &mut s);
    s
}

/// `repr(x)`.
pub fn py_repr(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => push_number(v, out),
        ValueKind::String => str_repr(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq => {
            let tuple = v.downcast_object_ref::<PyTuple>().is_some();
            out.push(if tuple { '(' } else { '[' });
            let mut n = 0;
            if let Ok(iter) = v.try_iter() {
                for (i, item) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&item, out);
                    n += 1;
                }
            }
            if tuple && n == 1 {
                out.push(',');
            }
            out.push(if tuple { ')' } else { ']' });
        }
        ValueKind::Map => {
            out.push('{');
            if let Some(pairs) = v.as_object().and_then(|o| o.try_iter_pairs()) {
                for (i, (k, item)) in pairs.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&k, out);
                    out.push_str(": ");
                    py_repr(&item, out);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

/// Python's `str.__repr__`: single quotes unless the text has `'` and no `"`.
fn str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let n = c as u32;
                let _ = if n <= 0xff {
                    write!(out, "\\x{n:02x}")
                } else if n <= 0xffff {
                    write!(out, "\\u{n:04x}")
                } else {
                    write!(out, "\\U{n:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Approximation of Python's `str.isprintable` for one character: false for
/// control (Cc), format (Cf), line/paragraph separators, spaces other than
/// U+0020 (Zs), private use (Co) and noncharacters.
fn is_printable(c: char) -> bool {
    let n = c as u32;
    !matches!(n,
        0x00..=0x1f | 0x7f..=0xa0 | 0xad
        | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2
        | 0x1680 | 0x180e | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f
        | 0x3000 | 0xd800..=0xf8ff | 0xfdd0..=0xfdef | 0xfeff
        | 0xfff0..=0xfffb | 0xfffe..=0xffff
        | 0x110bd | 0x110cd | 0x13430..=0x1343f | 0x1bca0..=0x1bca3
        | 0x1d173..=0x1d17a | 0xe0000..=0xe00ff | 0xf0000..=0x10ffff)
        && (n & 0xfffe) != 0xfffe
}

/// Options of `json.dumps` (Python defaults: `ensure_ascii=False` as transformers
/// overrides it, no indent, default separators, insertion order).
#[derive(Debug, Clone, Default)]
pub struct JsonOptions {
    pub ensure_ascii: bool,
    /// `None`: one line. `Some(unit)`: newline + `unit` per nesting level.
    pub indent: Option<String>,
    /// `None`: `(", ", ": ")`, or `(",", ": ")` when indenting.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
}

fn not_serializable(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("Object of type {what} is not JSON serializable"),
    )
}

/// `json.dumps(v, **opts)`.
pub fn json_dumps(v: &Value, opts: &JsonOptions) -> Result<String, Error> {
    let (item_sep, key_sep) = match &opts.separators {
        Some((i, k)) => (i.as_str(), k.as_str()),
        None if opts.indent.is_some() => (",", ": "),
        None => (", ", ": "),
    };
    let mut enc = JsonEncoder { opts, item_sep, key_sep, out: String::new() };
    enc.value(v, 0)?;
    Ok(enc.out)
}

struct JsonEncoder<'a> {
    opts: &'a JsonOptions,
    item_sep: &'a str,
    key_sep: &'a str,
    out: String,
}

impl JsonEncoder<'_> {
    fn newline(&mut self, level: usize) {
        if let Some(unit) = &self.opts.indent {
            self.out.push('\n');
            for _ in 0..level {
                self.out.push_str(unit);
            }
        }
    }

    fn value(&mut self, v: &Value, level: usize) -> Result<(), Error> {
        match v.kind() {
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self.out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.number(v),
            ValueKind::String => self.string(v.as_str().unwrap_or_default()),
            ValueKind::Seq => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    self.out.push_str("[]");
                    return Ok(());
                }
                self.out.push('[');
                self.newline(level + 1);
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(self.item_sep);
                        self.newline(level + 1);
                    }
                    self.value(item, level + 1)?;
                }
                self.newline(level);
                self.out.push(']');
            }
            ValueKind::Map => {
                let mut pairs: Vec<(Value, Value)> =
                    v.as_object().and_then(|o| o.try_iter_pairs()).into_iter().flatten().collect();
                if pairs.is_empty() {
                    self.out.push_str("{}");
                    return Ok(());
                }
                if self.opts.sort_keys {
                    if pairs.iter().any(|(k, _)| k.kind() != pairs[0].0.kind()) {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            "sort_keys: dict keys of different types cannot be compared",
                        ));
                    }
                    pairs.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.out.push('{');
                self.newline(level + 1);
                for (i, (k, item)) in pairs.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(self.item_sep);
                        self.newline(level + 1);
                    }
                    self.key(k)?;
                    self.out.push_str(self.key_sep);
                    self.value(item, level + 1)?;
                }
                self.newline(level);
                self.out.push('}');
            }
            ValueKind::Undefined => return Err(not_serializable("Undefined")),
            ValueKind::Bytes => return Err(not_serializable("bytes")),
            ValueKind::Iterable => return Err(not_serializable("iterator")),
            _ => return Err(not_serializable("object")),
        }
        Ok(())
    }

    fn number(&mut self, v: &Value) {
        if v.is_integer() {
            let _ = write!(self.out, "{v}");
            return;
        }
        let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
        if f.is_nan() {
            self.out.push_str("NaN");
        } else if f.is_infinite() {
            self.out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        } else {
            float_repr(f, &mut self.out);
        }
    }

    /// Dict keys: strings as is; numbers, booleans and None converted like Python.
    fn key(&mut self, k: &Value) -> Result<(), Error> {
        match k.kind() {
            ValueKind::String => self.string(k.as_str().unwrap_or_default()),
            ValueKind::None => self.out.push_str("\"null\""),
            ValueKind::Bool => {
                self.out.push_str(if k.is_true() { "\"true\"" } else { "\"false\"" })
            }
            ValueKind::Number => {
                let mut s = String::new();
                if k.is_integer() {
                    let _ = write!(s, "{k}");
                } else {
                    let f = f64::try_from(k.clone()).unwrap_or(f64::NAN);
                    if f.is_nan() {
                        s.push_str("NaN");
                    } else if f.is_infinite() {
                        s.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                    } else {
                        float_repr(f, &mut s);
                    }
                }
                self.string(&s);
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("keys must be str, int, float, bool or None, not {}", k.kind()),
                ));
            }
        }
        Ok(())
    }

    fn string(&mut self, s: &str) {
        let out = &mut self.out;
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c if self.opts.ensure_ascii && !(' '..='~').contains(&c) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(f: f64) -> String {
        let mut s = String::new();
        float_repr(f, &mut s);
        s
    }

    #[test]
    fn float_repr_matches_python() {
        // python3 -c 'print([repr(x) for x in (...)])'
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-2.0, "-2.0"),
            (1e-05, "1e-05"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.1 + 0.2, "0.30000000000000004"),
            (4.56789, "4.56789"),
            (1e100, "1e+100"),
            (-1.5e-300, "-1.5e-300"),
            (5e-324, "5e-324"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (100.0, "100.0"),
            (12345.678, "12345.678"),
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
        ];
        for (f, want) in cases {
            assert_eq!(repr(f), want, "{f:e}");
        }
    }

    fn dumps(json: &str, opts: &JsonOptions) -> String {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        json_dumps(&Value::from_serialize(&v), opts).unwrap()
    }

    #[test]
    fn tojson_default_matches_python() {
        // json.dumps(json.loads(src), ensure_ascii=False)
        let o = JsonOptions::default();
        assert_eq!(
            dumps(r#"{"b":1,"a":[1.0,2.5e-7,null,true],"u":"é\n\u0001<&>'\"","e":{},"l":[]}"#, &o),
            r#"{"b": 1, "a": [1.0, 2.5e-07, null, true], "u": "é\n\u0001<&>'\"", "e": {}, "l": []}"#
        );
        assert_eq!(dumps(r#""😀\u007f""#, &o), "\"😀\u{7f}\"");
    }

    #[test]
    fn tojson_indent_matches_python() {
        // json.dumps(json.loads(src), ensure_ascii=False, indent=2)
        let o = JsonOptions { indent: Some("  ".into()), ..Default::default() };
        assert_eq!(
            dumps(r#"{"a":[1,{"b":null}],"c":{},"d":[]}"#, &o),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": null\n    }\n  ],\n  \"c\": {},\n  \"d\": []\n}"
        );
        let o = JsonOptions { indent: Some(String::new()), ..Default::default() };
        assert_eq!(dumps("[1,2]", &o), "[\n1,\n2\n]");
    }

    #[test]
    fn tojson_options_match_python() {
        let o = JsonOptions { ensure_ascii: true, sort_keys: true, ..Default::default() };
        assert_eq!(dumps(r#"{"z":"é😀","a":1}"#, &o), r#"{"a": 1, "z": "\u00e9\ud83d\ude00"}"#);
        let o = JsonOptions { separators: Some((",".into(), ":".into())), ..Default::default() };
        assert_eq!(dumps(r#"{"a":[1,2]}"#, &o), r#"{"a":[1,2]}"#);
    }

    #[test]
    fn str_and_repr_match_python() {
        let v: serde_json::Value = serde_json::from_str(
            r#"["it's", "say \"hi\"", "both ' \"", "\u0007\u00a0é", 1.0, null, true, {"k": [2]}]"#,
        )
        .unwrap();
        assert_eq!(
            to_py_str(&Value::from_serialize(&v)),
            r#"["it's", 'say "hi"', 'both \' "', '\x07\xa0é', 1.0, None, True, {'k': [2]}]"#
        );
        assert_eq!(to_py_str(&Value::from(())), "None");
        assert_eq!(to_py_str(&Value::from(false)), "False");
        assert_eq!(to_py_str(&Value::UNDEFINED), "");
    }
}
