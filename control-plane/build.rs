//! Compiles etcd's v3 API protos (vendored under `proto/etcd`) into a tonic
//! client with a pure-Rust protobuf compiler (no system protoc), as the xds
//! crate does for its protos.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["etcd/etcdserver/etcdserverpb/rpc.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
