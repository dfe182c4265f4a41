//! The generated code is checked in so that builds and packages never need `protoc`. This test
//! regenerates it with a vendored `protoc` and fails when the checked-in copy is stale.
//! `KREACH_REGENERATE=1 cargo test -p kreach-etcd --test generated_is_fresh` rewrites it.

use std::path::Path;

#[test]
fn generated_code_matches_the_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    // tonic-prost-build reads PROTOC from the environment; tests in this binary run this one
    // function only.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        // A client of etcd only: no server traits to compile.
        .build_client(true)
        .build_server(false)
        .out_dir(out.path())
        .compile_protos(
            &[
                root.join("proto/etcdserverpb/rpc.proto"),
                root.join("proto/mvccpb/kv.proto"),
            ],
            &[root.join("proto")],
        )
        .expect("the schema compiles");
    let mut stale = Vec::new();
    for file in ["etcdserverpb.rs", "mvccpb.rs"] {
        let fresh = std::fs::read_to_string(out.path().join(file)).unwrap();
        let checked_in_path = root.join("src/generated").join(file);
        if std::env::var_os("KREACH_REGENERATE").is_some() {
            std::fs::write(&checked_in_path, &fresh).unwrap();
            continue;
        }
        let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
        if fresh != checked_in {
            stale.push(format!("etcd/src/generated/{file}"));
        }
    }
    assert!(
        stale.is_empty(),
        "{} stale: run `KREACH_REGENERATE=1 cargo test -p kreach-etcd --test generated_is_fresh` and commit the result",
        stale.join(", ")
    );
}
