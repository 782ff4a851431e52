#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::process::ExitCode;

fn main() -> ExitCode {
    palisade::cli::main()
}
