//! The generated code is checked in so that builds and packages never need `protoc`. This test
//! regenerates it with a vendored `protoc` and fails when the checked-in copy is stale.
//! `KREACH_REGENERATE=1 cargo test -p kreach-proto` rewrites it.

use std::path::Path;

#[test]
fn generated_code_matches_the_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    // SAFETY-free: tonic-prost-build reads PROTOC from the environment; tests in this binary run
    // this one function only.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Labels compare and print in one order (the domain keeps them in a BTreeMap too).
        .btree_map(".kreach.v1.HostFacts.labels")
        .out_dir(out.path())
        .compile_protos(
            &[root.join("proto/kreach/v1/kreach.proto")],
            &[root.join("proto")],
        )
        .expect("the schema compiles");
    let fresh = std::fs::read_to_string(out.path().join("kreach.v1.rs")).unwrap();
    let checked_in_path = root.join("src/generated/kreach.v1.rs");
    if std::env::var_os("KREACH_REGENERATE").is_some() {
        std::fs::write(&checked_in_path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    assert!(
        fresh == checked_in,
        "proto/src/generated/kreach.v1.rs is stale: run `KREACH_REGENERATE=1 cargo test -p kreach-proto` and commit the result"
    );
}
