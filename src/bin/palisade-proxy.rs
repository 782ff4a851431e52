//! `palisade-proxy`: the sidecar proxy alone. `palisade proxy` execs it when it is installed
//! next to `palisade` (as in the image); its command line is `palisade proxy`'s.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::process::ExitCode;

fn main() -> ExitCode {
    palisade::cli::proxy_main()
}
