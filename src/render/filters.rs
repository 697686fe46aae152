//! Filters and functions available to every template.
//!
//! | name | kind | what it does |
//! |---|---|---|
//! | `sha256(n)` | filter | first `n` lowercase hex characters of the SHA-256 of the text (all 64 without `n`) |
//! | `label_value` | filter | a valid Kubernetes label value: other characters become `_`, cut to 63 bytes, non-alphanumerics trimmed from both ends |
//! | `go_duration` | filter | seconds (or a duration text) as Go's `time.Duration` text after rounding to whole seconds; never negative (less than nothing is `0s`) |
//! | `rfc3339` | filter | seconds since the epoch (or a timestamp text) as `YYYY-MM-DDTHH:MM:SSZ` |
//! | `tojson` | filter | JSON text (valid YAML too); an undefined value is an error |
//! | `index_of(x)` | filter | position of the first item equal to `x` in a list, `none` if absent |
//! | `timestamp(t)` | function | an RFC 3339 text as seconds since the epoch; `none` for `none` |
//! | `duration(d)` | function | a duration text (`5m`, `1h30m`) as seconds |
//! | `elapsed(start, end)` | function | seconds from `start` to `end` (timestamp texts or seconds since the epoch); `0` when `end` is before `start` |
//! | `condition(obj, type)` | function | the condition of that type in `obj.status.conditions`, or `none` |

use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind};
use sha2::{Digest, Sha256};

pub(super) fn register(env: &mut Environment<'static>) {
    env.add_filter("sha256", sha256);
    env.add_filter("label_value", label_value);
    env.add_filter("go_duration", go_duration);
    env.add_filter("rfc3339", rfc3339);
    env.add_filter("index_of", index_of);
    env.add_filter("tojson", tojson);
    env.add_function("timestamp", timestamp);
    env.add_function("duration", duration);
    env.add_function("elapsed", elapsed);
    env.add_function("condition", condition);
}

fn invalid(msg: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg)
}

fn text_of(v: &Value, filter: &str) -> Result<String, Error> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(format!("{filter} expects text, got {} `{v}`", v.kind())))
}

fn sha256(v: &Value, n: Option<usize>) -> Result<String, Error> {
    let text = text_of(v, "sha256")?;
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex[..n.unwrap_or(64).min(64)].to_string())
}

/// Turns any text into a valid label value (RFC 1123-ish: `[A-Za-z0-9._-]`, at most 63 bytes,
/// beginning and ending with an alphanumeric character).
pub fn label_value_of(text: &str) -> String {
    let replaced: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cut = &replaced[..replaced.len().min(63)];
    cut.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn label_value(v: &Value) -> Result<String, Error> {
    Ok(label_value_of(&text_of(v, "label_value")?))
}

fn secs_of(v: &Value, what: &str) -> Result<f64, Error> {
    if let Some(s) = v.as_str() {
        return crate::time::parse_duration(s).map_err(invalid);
    }
    f64::try_from(v.clone()).map_err(|_| {
        invalid(format!(
            "{what} expects seconds or a duration, got {} `{v}`",
            v.kind()
        ))
    })
}

fn go_duration(v: &Value) -> Result<String, Error> {
    Ok(crate::time::go_duration(secs_of(v, "go_duration")?))
}

/// A point in time as seconds since the epoch: an RFC 3339 text or a number of seconds.
fn instant_of(v: &Value, what: &str) -> Result<f64, Error> {
    if let Some(s) = v.as_str() {
        return crate::time::parse_secs(s)
            .ok_or_else(|| invalid(format!("{what}: `{s}` is not an RFC 3339 timestamp")));
    }
    f64::try_from(v.clone()).map_err(|_| {
        invalid(format!(
            "{what} expects a timestamp or seconds since the epoch, got {} `{v}`",
            v.kind()
        ))
    })
}

fn rfc3339(v: &Value) -> Result<String, Error> {
    if let Some(s) = v.as_str() {
        let secs = crate::time::parse_secs(s)
            .ok_or_else(|| invalid(format!("rfc3339: `{s}` is not an RFC 3339 timestamp")))?;
        return Ok(crate::time::format_secs(secs));
    }
    let secs = f64::try_from(v.clone()).map_err(|_| {
        invalid(format!(
            "rfc3339 expects seconds or a timestamp, got {} `{v}`",
            v.kind()
        ))
    })?;
    Ok(crate::time::format_secs(secs))
}

fn index_of(list: &Value, needle: &Value) -> Result<Value, Error> {
    let iter = list
        .try_iter()
        .map_err(|_| invalid(format!("index_of expects a list, got {}", list.kind())))?;
    for (i, item) in iter.enumerate() {
        if &item == needle {
            return Ok(Value::from(i));
        }
    }
    Ok(Value::from(()))
}

/// JSON text of a value; an undefined value is an error rather than `null`.
fn tojson(v: &Value) -> Result<Value, Error> {
    if v.is_undefined() {
        return Err(Error::new(
            ErrorKind::UndefinedError,
            "tojson of an undefined value (a field that is not there)",
        ));
    }
    serde_json::to_string(v)
        .map(Value::from_safe_string)
        .map_err(|e| invalid(format!("tojson: {e}")))
}

fn timestamp(v: &Value) -> Result<Value, Error> {
    if v.is_none() || v.is_undefined() {
        return Ok(Value::from(()));
    }
    let s = text_of(v, "timestamp")?;
    crate::time::parse_secs(&s)
        .map(Value::from)
        .ok_or_else(|| invalid(format!("timestamp: `{s}` is not an RFC 3339 timestamp")))
}

fn duration(v: &Value) -> Result<f64, Error> {
    secs_of(v, "duration")
}

/// Time between two instants, clamped at zero (see [`crate::time::elapsed_secs`]).
fn elapsed(start: &Value, end: &Value) -> Result<f64, Error> {
    Ok(crate::time::elapsed_secs(
        instant_of(start, "elapsed (start)")?,
        instant_of(end, "elapsed (end)")?,
    ))
}

fn condition(obj: &Value, kind: &str) -> Result<Value, Error> {
    if obj.is_none() || obj.is_undefined() {
        return Ok(Value::from(()));
    }
    let conditions = obj
        .get_attr("status")
        .ok()
        .filter(|s| !s.is_undefined() && !s.is_none())
        .and_then(|s| s.get_attr("conditions").ok())
        .filter(|c| !c.is_undefined() && !c.is_none());
    if let Some(conditions) = conditions
        && let Ok(iter) = conditions.try_iter()
    {
        for c in iter {
            if c.get_attr("type").ok().as_ref().and_then(Value::as_str) == Some(kind) {
                return Ok(c);
            }
        }
    }
    Ok(Value::from(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str) -> String {
        let mut env = Environment::new();
        register(&mut env);
        env.render_str(src, ())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn sha256_prefix() {
        // sha256("default/deployment/nginx")
        let full = render("{{ 'default/deployment/nginx' | sha256 }}");
        assert_eq!(full.len(), 64);
        assert_eq!(
            render("{{ 'default/deployment/nginx' | sha256(16) }}"),
            full[..16]
        );
        assert_eq!(
            render("{{ '' | sha256(8) }}"),
            "e3b0c442",
            "sha256 of the empty string starts e3b0c442"
        );
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(
            label_value_of("default__deployment__nginx"),
            "default__deployment__nginx"
        );
        assert_eq!(label_value_of("ns/app:v1 ü"), "ns_app_v1");
        assert_eq!(label_value_of("__x__"), "x");
        let long = "a".repeat(62) + "_bbbb";
        assert_eq!(label_value_of(&long), "a".repeat(62));
        assert_eq!(label_value_of("///"), "");
    }

    #[test]
    fn time_helpers() {
        assert_eq!(render("{{ 3723 | go_duration }}"), "1h2m3s");
        assert_eq!(render("{{ '90s' | go_duration }}"), "1m30s");
        assert_eq!(render("{{ 0 | rfc3339 }}"), "1970-01-01T00:00:00Z");
        assert_eq!(
            render(
                "{{ (timestamp('2026-01-01T00:01:00Z') - timestamp('2026-01-01T00:00:00Z')) | go_duration }}"
            ),
            "1m0s"
        );
        assert_eq!(render("{{ duration('5m') }}"), "300.0");
        assert_eq!(render("{{ -30 | go_duration }}"), "0s");
        assert_eq!(
            render("{{ elapsed('2026-01-01T00:00:00Z', '2026-01-01T00:01:30Z') }}"),
            "90.0"
        );
        assert_eq!(
            render("{{ elapsed('2026-01-01T00:00:00Z', '2026-01-01T00:01:30Z') | go_duration }}"),
            "1m30s"
        );
        assert_eq!(
            render("{{ elapsed(timestamp('2026-01-01T00:00:10Z'), 1767225600) }}"),
            "0.0",
            "an end before the start is no time, not negative time"
        );
        assert_eq!(
            render("{{ elapsed('2026-11-30T12:00:00Z', '2026-01-01T00:00:00Z') | go_duration }}"),
            "0s"
        );
        assert!(render("{{ elapsed(none, '2026-01-01T00:00:00Z') }}").contains("elapsed (start)"));
        assert!(render("{{ elapsed('2026-01-01T00:00:00Z', 'later') }}").contains("`later`"));
        assert_eq!(render("{{ timestamp(none) is none }}"), "True");
        assert!(render("{{ timestamp('soon') }}").starts_with("ERR"));
    }

    #[test]
    fn list_and_condition_helpers() {
        assert_eq!(render("{{ ['a', '', 'b'] | index_of('') }}"), "1");
        assert_eq!(render("{{ ['a'] | index_of('z') is none }}"), "True");
        assert_eq!(
            render(
                "{{ condition({'status': {'conditions': [{'type': 'Succeeded', 'status': 'True'}]}}, 'Succeeded').status }}"
            ),
            "True"
        );
        assert_eq!(render("{{ condition({}, 'Succeeded') is none }}"), "True");
    }
}
