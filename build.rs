//! Compiles `proto/` with protox (pure Rust), so building needs no `protoc` binary, and packs
//! the executables' relative relocations where the C library can read them packed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/istio/v1/auth/ca.proto",
        "proto/palisade/v1/mesh.proto",
        "proto/grpc/health/v1/health.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Maps as BTreeMap: the encoding of a palisade.v1 resource is then deterministic, and
        // a view's version (a hash of the encoded content) changes only when the content does.
        .btree_map(".palisade.v1")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    pack_relative_relocations();
    Ok(())
}

/// A position-independent executable carries a relocation for every pointer in its read-only
/// data (vtables, string tables), ~24 bytes each; the loader reads them all at start, so they
/// stay resident: ~0.7 MiB of `palisade-proxy`'s resident set. `-z pack-relative-relocs`
/// (DT_RELR) stores the same in ~1% of the space. The C library reads it from glibc 2.36, and
/// the executable then needs it (`GLIBC_ABI_DT_RELR`), so it is only done when building on
/// Linux for this machine against glibc 2.36 or later (the image builds on the Debian release
/// it runs on). Linkers that predate the option ignore it with a warning.
fn pack_relative_relocations() {
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let native = env("TARGET") == env("HOST");
    if !native || env("CARGO_CFG_TARGET_OS") != "linux" || env("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    let glibc = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| glibc_version(&text));
    if glibc.is_some_and(|version| version >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// `(major, minor)` from `getconf GNU_LIBC_VERSION`'s answer, `glibc 2.36`.
fn glibc_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().strip_prefix("glibc ")?.split_once('.')?;
    let minor = minor.split(|c: char| !c.is_ascii_digit()).next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
