//! `kreach-agent diagnose` as a real process on a client host whose hosts block kreach wrote: a
//! working broker (stand-in Kafka), one where nothing listens, one that advertises another name,
//! and a name removed from the hosts file by hand.

mod support;

use support::*;

/// A stand-in broker `id` on 127.0.0.`id`:`port`, advertising `advertised`:`port`.
fn broker(id: u8, port: u16, advertised: &str) -> Host {
    let host = Host::broker(&format!("emr-worker-{id}"));
    host.write_properties(&format!(
        "node.id={id}\nlisteners=INTERNAL://127.0.0.{id}:{port}\n\
         advertised.listeners=INTERNAL://{advertised}:{port}\n\
         listener.security.protocol.map=INTERNAL:PLAINTEXT\n"
    ));
    host.start_kafka();
    host
}

#[test]
fn diagnose_walks_each_brokers_steps_and_names_the_first_that_breaks() {
    let port = Ports::new().internal;
    let client = Host::client("etl-1");
    client.append_config("[reachability]\nresolve = \"hosts_file\"\n");
    let mut spec = format!(
        "[cluster]\nname = \"c\"\n[listeners.internal]\nport = {port}\nbind = \"private_ip\"\nadvertise = \"hostname\"\n"
    );
    for id in 1..=3 {
        spec += &format!(
            "[[broker]]\nid = {id}\nnode = \"emr-worker-{id}\"\nhostname = \"emr-worker-{id}.c\"\nprivate_ip = \"127.0.0.{id}\"\n"
        );
    }
    spec += "[[client]]\nnode = \"etl-1\"\nview = \"private\"\n";
    let spec = client.write_file("spec.toml", &spec);
    let run = client.agent(&["apply-local", &spec]);
    assert_eq!(run.code, 0, "{run}");
    let _one = broker(1, port, "emr-worker-1.c");
    // Broker 2: nothing listens on 127.0.0.2. Broker 3 answers, but advertises another name.
    let _three = broker(3, port, "emr-worker-9.c");

    let run = client.agent(&["diagnose"]);
    eprintln!("kreach-agent diagnose:\n{}", run.stdout);
    assert_eq!(run.code, 4, "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    let has = |broker: u8, step: &str, ok: bool| {
        lines.iter().any(|line| {
            line.starts_with(&format!("broker {broker} "))
                && line.contains(step)
                && line.contains(if ok { " ok " } else { " BROKEN " })
        })
    };
    assert!(
        has(1, "resolve", true) && has(1, "TCP connect", true),
        "{run}"
    );
    assert!(
        has(1, "Metadata", true) && has(1, "advertised endpoint", true),
        "{run}"
    );
    assert!(
        run.stdout
            .contains("emr-worker-1.c → 127.0.0.1 by the hosts file"),
        "{run}"
    );
    assert!(
        has(2, "TCP connect", false) && !has(2, "ApiVersions", true),
        "{run}"
    );
    assert!(has(3, "advertised endpoint", false), "{run}");
    assert!(
        run.stdout.contains("the spec expects emr-worker-3.c:"),
        "{run}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("broken: broker 2 at TCP connect"),
        "{run}"
    );

    // One broker, all well.
    let run = client.agent(&["diagnose", "--broker", "1"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.ends_with("every step passed\n"), "{run}");

    // Its name removed from the hosts file by hand: the first step breaks, the rest do not run.
    let hosts = client.hosts().replace("emr-worker-1.c ", "");
    client.write_hosts(&hosts);
    let run = client.agent(&["diagnose", "--broker", "1", "--json"]);
    assert_eq!(run.code, 4, "{run}");
    let steps: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(steps.len(), 1, "{run}");
    assert_eq!(steps[0]["step"], "resolve");
    assert_eq!(steps[0]["ok"], false);
    assert!(
        steps[0]["detail"]
            .as_str()
            .unwrap()
            .contains("does not resolve: not in"),
        "{run}"
    );
}
