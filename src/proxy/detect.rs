//! Tells a mesh mTLS handshake from anything else by looking at the first bytes a client sent,
//! before any of them is handed on. Pure over bytes: the inbound listener calls [`detect`] each
//! time more bytes arrived, until it answers something other than [`Detection::NeedMore`].
//!
//! A mesh handshake is a TLS ClientHello whose ALPN extension lists [`MESH_ALPN`]. Only a
//! ClientHello that fits in its first TLS record is recognised: rustls (what every Palisade
//! proxy uses) sends it in one record, even with the post-quantum key share (about 1.3 KiB).
//! A ClientHello spread over several records is classified [`Detection::Other`] — under STRICT
//! that closes the connection (fail closed), under PERMISSIVE its bytes pass to the app as they
//! are, which is what a client speaking its own TLS to the app expects.

use super::MESH_ALPN;

/// Largest TLS record fragment a client may send (RFC 8446 5.1: 2^14 bytes).
pub const MAX_RECORD: usize = 16 * 1024;
/// TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
/// The most bytes [`detect`] ever needs: one maximal record with its header. A caller that
/// buffers this much and still gets [`Detection::NeedMore`] has a bug; it treats it as Other.
pub const MAX_PEEK: usize = RECORD_HEADER + MAX_RECORD;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_ALPN: u16 = 16;

/// What the first bytes of a connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// A ClientHello offering [`MESH_ALPN`].
    MeshTls,
    /// Anything else: plaintext, another TLS, garbage, an oversized or split ClientHello.
    Other,
}

/// Classifies `buf`, the bytes received so far (never more than [`MAX_PEEK`] are needed).
pub fn detect(buf: &[u8]) -> Detection {
    // Record header. Each byte is checked as soon as it is there, so plaintext is recognised
    // from its first byte and a server-speaks-first wait is not prolonged needlessly.
    let Some(&content_type) = buf.first() else {
        return Detection::NeedMore;
    };
    if content_type != CONTENT_HANDSHAKE {
        // Includes SSLv2-style hellos (first byte has the high bit set).
        return Detection::Other;
    }
    match buf.get(1) {
        None => return Detection::NeedMore,
        Some(3) => {}
        Some(_) => return Detection::Other,
    }
    let Some(len) = buf
        .get(3..5)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return Detection::NeedMore;
    };
    if len == 0 || len > MAX_RECORD {
        return Detection::Other;
    }
    let Some(fragment) = buf.get(RECORD_HEADER..RECORD_HEADER + len) else {
        // Decide early on what the partial fragment already shows (a non-ClientHello type).
        if buf
            .get(RECORD_HEADER)
            .is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO)
        {
            return Detection::Other;
        }
        return Detection::NeedMore;
    };
    match client_hello_offers_mesh(fragment) {
        Some(true) => Detection::MeshTls,
        Some(false) | None => Detection::Other,
    }
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }

    /// A vector with a length prefix of `prefix` bytes (1 or 2).
    fn vec(&mut self, prefix: usize) -> Option<&'a [u8]> {
        let n = match prefix {
            1 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        self.take(n)
    }
}

/// Whether the handshake message in `fragment` is a complete ClientHello listing MESH_ALPN.
/// None when it is not a well-formed ClientHello contained in this one record.
fn client_hello_offers_mesh(fragment: &[u8]) -> Option<bool> {
    let mut r = Reader(fragment);
    if r.u8()? != HANDSHAKE_CLIENT_HELLO {
        return None;
    }
    let body_len = r.u24()?;
    // A ClientHello longer than this record continues in the next: not supported (see above).
    let mut body = Reader(r.take(body_len)?);
    body.take(2 + 32)?; // legacy_version, random
    body.vec(1)?; // legacy_session_id
    body.vec(2)?; // cipher_suites
    body.vec(1)?; // legacy_compression_methods
    if body.0.is_empty() {
        return Some(false); // no extensions at all: certainly no ALPN
    }
    let mut extensions = Reader(body.vec(2)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec(2)?;
        if kind == EXTENSION_ALPN {
            let mut ext = Reader(data);
            let mut names = Reader(ext.vec(2)?);
            while !names.0.is_empty() {
                if names.vec(1)? == MESH_ALPN {
                    return Some(true);
                }
            }
            return Some(false);
        }
    }
    Some(false)
}

#[cfg(test)]
#[path = "detect_tests.rs"]
mod tests;
