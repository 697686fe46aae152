//! The `lifecycle` command: parse the command line, set up logging, call into the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    lifecycle_engine::cli::main()
}
