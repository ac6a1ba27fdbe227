//! jinja2's filters and tests where minijinja's differ or are missing, so that a
//! chat template renders what jinja2 (in transformers' environment) renders:
//! - `tojson`: transformers' override, `json.dumps(x, ensure_ascii=False, indent,
//!   separators, sort_keys)` (pyfmt.rs);
//! - `string`, `join`, `trim`: Python `str()` of values, Python whitespace;
//! - `escape`/`e`/`forceescape`: markupsafe's five escapes (`&#39;`, `&#34;`);
//! - `round`: Python's `round()` (ties to even) for the default `common` method;
//! - `items`, `dictsort`: pairs are tuples, printed `('k', 'v')`;
//! - `indent`: keeps a trailing newline, as jinja2's does;
//! - `center`, `wordcount`, `truncate`: missing in minijinja;
//! - tests `sequence` (strings and dicts are sequences), `number` (booleans are
//!   numbers) and `iterable` (None is not), as jinja2 defines them.

use minijinja::value::{Kwargs, Value, ValueKind, from_args};
use minijinja::{Environment, Error, ErrorKind, State};

use super::pyfmt::{JsonOptions, PyTuple, json_dumps, to_py_str};
use super::pystr;

/// A sequence of pairs => a list of tuples.
pub fn pairs_to_tuples(v: Value) -> Result<Value, Error> {
    Ok(Value::from(
        v.try_iter()?
            .map(|pair| {
                Value::from_object(PyTuple(
                    pair.try_iter().map(|i| i.collect()).unwrap_or_default(),
                ))
            })
            .collect::<Vec<_>>(),
    ))
}

/// Registers the filters and tests of the module docs.
pub fn register(env: &mut Environment<'static>) {
    env.add_filter("tojson", tojson);
    env.add_filter("trim", pystr::trim_filter);
    env.add_filter("string", |v: &Value| Value::from(to_py_str(v)));
    env.add_filter("join", join);
    env.add_filter("escape", escape);
    env.add_filter("e", escape);
    env.add_filter("forceescape", |v: &Value| {
        Value::from_safe_string(markup_escape(&to_py_str(v)))
    });
    env.add_filter("round", round);
    env.add_filter("items", |v: &Value| pairs_to_tuples(minijinja::filters::items(v)?));
    env.add_filter("dictsort", |v: &Value, kwargs: Kwargs| {
        pairs_to_tuples(minijinja::filters::dictsort(v, kwargs)?)
    });
    env.add_filter("center", center);
    env.add_filter("wordcount", |v: &Value| {
        let s = to_py_str(v);
        let words =
            s.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).count();
        Value::from(words)
    });
    env.add_filter("truncate", truncate);
    env.add_filter("indent", indent);
    env.add_test("sequence", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::Seq | ValueKind::Map | ValueKind::String | ValueKind::Undefined
        )
    });
    env.add_test("number", |v: &Value| matches!(v.kind(), ValueKind::Number | ValueKind::Bool));
    env.add_test("iterable", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::Seq
                | ValueKind::Map
                | ValueKind::Iterable
                | ValueKind::String
                | ValueKind::Bytes
                | ValueKind::Undefined
        )
    });
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, positionally or by keyword.
fn tojson(value: &Value, args: &[Value]) -> Result<Value, Error> {
    let (ensure_ascii, indent, separators, sort_keys, kwargs): (
        Option<Value>,
        Option<Value>,
        Option<Value>,
        Option<Value>,
        Kwargs,
    ) = from_args(args)?;
    let pick = |pos: Option<Value>, name: &str| -> Result<Option<Value>, Error> {
        let kw: Option<Value> = kwargs.get(name)?;
        Ok(kw.or(pos).filter(|v| !v.is_none()))
    };
    let ensure_ascii = pick(ensure_ascii, "ensure_ascii")?;
    let indent = pick(indent, "indent")?;
    let separators = pick(separators, "separators")?;
    let sort_keys = pick(sort_keys, "sort_keys")?;
    kwargs.assert_all_used()?;

    let mut opts = JsonOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        ..Default::default()
    };
    opts.indent = match indent {
        None => None,
        Some(v) if v.kind() == ValueKind::String => {
            Some(v.as_str().unwrap_or_default().to_string())
        }
        Some(v) if v.kind() == ValueKind::Bool => Some(if v.is_true() { " " } else { "" }.into()),
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an int or a string")
            })?;
            Some(" ".repeat(n.clamp(0, 1 << 16) as usize))
        }
    };
    if let Some(sep) = separators {
        let parts: Vec<Value> = sep.try_iter()?.collect();
        match parts.as_slice() {
            [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                opts.separators = Some((
                    a.as_str().unwrap_or_default().to_string(),
                    b.as_str().unwrap_or_default().to_string(),
                ));
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be a pair of strings",
                ));
            }
        }
    }
    json_dumps(value, &opts).map(Value::from)
}

/// jinja2's `join(value, d='', attribute=None)` with Python `str()` of each item.
fn join(value: &Value, sep: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let attribute: Option<Value> = kwargs.get("attribute")?;
    let sep_kw: Option<Value> = kwargs.get("d")?;
    kwargs.assert_all_used()?;
    let sep = sep.or(sep_kw).map(|v| to_py_str(&v)).unwrap_or_default();
    if value.is_undefined() || value.is_none() {
        return Ok(Value::from(""));
    }
    let items: Vec<Value> = match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().chars().map(Value::from).collect(),
        _ => value.try_iter()?.collect(),
    };
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&sep);
        }
        let item =
            match &attribute {
                Some(attr) => to_py_str(attr).split('.').try_fold(item.clone(), |v, part| {
                    match part.parse::<usize>() {
                        Ok(idx) => v.get_item(&Value::from(idx)),
                        Err(_) => v.get_attr(part),
                    }
                })?,
                None => item.clone(),
            };
        out.push_str(&to_py_str(&item));
    }
    Ok(Value::from(out))
}

/// markupsafe's `escape` of a string.
fn markup_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// jinja2's `escape`: already-safe strings pass, everything else is `str()`-ed
/// and escaped.
fn escape(v: &Value) -> Value {
    if v.is_safe() {
        return v.clone();
    }
    Value::from_safe_string(markup_escape(&to_py_str(v)))
}

/// jinja2's `round(value, precision=0, method='common')`.
fn round(state: &State, value: &Value, args: &[Value]) -> Result<Value, Error> {
    let (precision, method, kwargs): (Option<i64>, Option<String>, Kwargs) = from_args(args)?;
    let precision = kwargs.get::<Option<i64>>("precision")?.or(precision).unwrap_or(0);
    let method =
        kwargs.get::<Option<String>>("method")?.or(method).unwrap_or_else(|| "common".into());
    kwargs.assert_all_used()?;
    let _ = state;
    let x = f64::try_from(value.clone())
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, "round: value must be a number"))?;
    let scale = 10f64.powi(precision.clamp(-300, 300) as i32);
    Ok(Value::from(match method.as_str() {
        "common" => {
            if value.is_integer() {
                return Ok(value.clone());
            }
            if precision >= 0 {
                // Python's round(): ties to even on the exact binary value, which is
                // what correctly rounded decimal formatting gives.
                format!("{x:.prec$}", prec = precision.min(300) as usize).parse().unwrap_or(x)
            } else {
                (x * scale).round_ties_even() / scale
            }
        }
        "ceil" => (x * scale).ceil() / scale,
        "floor" => (x * scale).floor() / scale,
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "round: method must be 'common', 'ceil' or 'floor'",
            ));
        }
    }))
}

/// Python's `str.center(width)`.
fn center(value: &Value, width: Option<i64>) -> Value {
    let s = to_py_str(value);
    // clamped: a width from request data must not exhaust memory
    let width = width.unwrap_or(80).min(1 << 24);
    let len = s.chars().count() as i64;
    let marg = width - len;
    if marg <= 0 {
        return Value::from(s);
    }
    let left = marg / 2 + (marg & width & 1);
    let right = marg - left;
    Value::from(format!("{}{s}{}", " ".repeat(left as usize), " ".repeat(right as usize)))
}

/// jinja2's `indent(s, width=4, first=False, blank=False)` (width may be a string).
fn indent(value: &Value, args: &[Value]) -> Result<Value, Error> {
    let (width, first, blank, kwargs): (Option<Value>, Option<bool>, Option<bool>, Kwargs) =
        from_args(args)?;
    let width = kwargs.get::<Option<Value>>("width")?.or(width);
    let first = kwargs.get::<Option<bool>>("first")?.or(first).unwrap_or(false);
    let blank = kwargs.get::<Option<bool>>("blank")?.or(blank).unwrap_or(false);
    kwargs.assert_all_used()?;
    let pad = match &width {
        None => "    ".to_string(),
        Some(w) if w.kind() == ValueKind::String => w.as_str().unwrap_or_default().to_string(),
        Some(w) => " ".repeat(w.as_i64().unwrap_or(4).clamp(0, 1 << 16) as usize),
    };
    // jinja2 appends "\n" before splitlines() so a trailing newline survives.
    let lines = pystr::py_splitlines(&(to_py_str(value) + "\n"), false);
    let mut out = String::new();
    if blank {
        out = lines.join(&format!("\n{pad}"));
    } else if let Some((head, rest)) = lines.split_first() {
        out.push_str(head);
        for line in rest {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&pad);
            }
            out.push_str(line);
        }
    }
    if first {
        out.insert_str(0, &pad);
    }
    Ok(Value::from(out))
}

/// jinja2's `truncate(s, length=255, killwords=False, end='...', leeway=5)`.
fn truncate(value: &Value, args: &[Value]) -> Result<Value, Error> {
    let (length, killwords, end, leeway, kwargs): (
        Option<i64>,
        Option<bool>,
        Option<String>,
        Option<i64>,
        Kwargs,
    ) = from_args(args)?;
    let length = kwargs.get::<Option<i64>>("length")?.or(length).unwrap_or(255);
    let killwords = kwargs.get::<Option<bool>>("killwords")?.or(killwords).unwrap_or(false);
    let end = kwargs.get::<Option<String>>("end")?.or(end).unwrap_or_else(|| "...".into());
    let leeway = kwargs.get::<Option<i64>>("leeway")?.or(leeway).unwrap_or(5);
    kwargs.assert_all_used()?;
    let s = to_py_str(value);
    let chars: Vec<char> = s.chars().collect();
    let end_len = end.chars().count() as i64;
    if length < end_len || leeway < 0 {
        return Err(Error::new(ErrorKind::InvalidOperation, "truncate: bad length or leeway"));
    }
    if chars.len() as i64 <= length + leeway {
        return Ok(Value::from(s));
    }
    let head: String = chars[..(length - end_len) as usize].iter().collect();
    if killwords {
        return Ok(Value::from(head + &end));
    }
    let cut = head.rsplit_once(' ').map_or(head.as_str(), |(a, _)| a);
    Ok(Value::from(format!("{cut}{end}")))
}
