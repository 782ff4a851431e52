//! Compiles `proto/` with protox (pure Rust), so building needs no `protoc` binary.

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
    Ok(())
}
