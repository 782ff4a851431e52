//! Palisade: a zero-trust service-mesh security control plane for Kubernetes.
//!
//! The crate is one library with thin binaries on top. Modules follow the architecture:
//! `api` (CRD types), `policy` (pure policy engine), `ca` (certificate authority), `auth`
//! (token authenticators), `xds` (gRPC services), `server` (the running control plane),
//! `cli` (subcommands).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod auth;
pub mod ca;
pub mod cli;
pub mod controller;
pub mod demo;
pub mod init;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod singleflight;
pub mod webhook;
pub mod xds;

/// An error and its causes on one line, `a: b: c`. Errors often include their cause in their
/// own message already (`{path}: {source}`), and a transport's top-level error says little;
/// a cause already said is not repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let message = cause.to_string();
        if !text.contains(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
        next = cause.source();
    }
    text
}

/// Reads UTF-8 text from `reader`, at most `max` bytes: `Ok(None)` when there is more, so every
/// file or stream read from outside has a bound without each caller re-counting bytes.
pub fn read_text_limited(reader: impl std::io::Read, max: u64) -> std::io::Result<Option<String>> {
    use std::io::Read as _;
    let mut text = String::new();
    let read = reader
        .take(max.saturating_add(1))
        .read_to_string(&mut text)?;
    Ok((read as u64 <= max).then_some(text))
}

/// Lower-case hexadecimal of `bytes` (serial numbers, random name suffixes): the one hex
/// encoder of the crate.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{b:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(super::hex(&[]), "");
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
