//! The offline world: a simulated cluster over a virtual clock ([`simulate`]) and rule-file
//! scenarios ([`scenario`]), for `render`, `simulate` and `test`; observations from files
//! ([`observe`]) for `explain`; what changed between two rule sets and its impact ([`diff`]).
//! Nothing here talks to a cluster.

pub mod diff;
#[cfg(test)]
mod example_tests;
pub mod observe;
#[cfg(test)]
mod projection_tests;
pub mod scenario;
pub mod simulate;

use serde_json::Value;
use std::path::Path;

/// Exit code when stdout was closed before the output was written: 128 + SIGPIPE, what shells
/// report for a program that a closed pipe ended.
pub const EXIT_OUTPUT_CLOSED: u8 = 141;

/// Writes `text` to stdout. A closed stdout ends the process quietly with
/// [`EXIT_OUTPUT_CLOSED`] (nothing is left to say, and no one to say it to); any other write
/// error is reported on stderr and ends it with 1. Only for the offline commands: the
/// controller never writes its work to stdout.
pub fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_OUTPUT_CLOSED.into());
        }
        let _ = writeln!(std::io::stderr(), "cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Reads a YAML or JSON object from a file.
pub fn read_object(path: &Path) -> Result<Value, String> {
    let text = crate::rules::read_limited(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if !v.is_object() {
        return Err(format!(
            "{}: expected a YAML mapping (one object)",
            path.display()
        ));
    }
    Ok(v)
}
