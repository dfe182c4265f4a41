//! Counters in Prometheus' text format 0.0.4, for both daemons' `/metrics`.
//!
//! prometheus-client writes counters the OpenMetrics way (`# TYPE name counter` without
//! `_total`), which Prometheus' 0.0.4 text parser and `promtool check metrics` read as samples
//! without help; gauges and histograms it writes in a form both read, so only counters are
//! written here. Pure.

/// One counter family: `# HELP`, `# TYPE` and a sample per label set, in the order given. `name`
/// ends in `_total`; label values are escaped.
pub fn write_counter<'a, L: AsRef<[(&'a str, &'a str)]>>(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
    for (labels, value) in samples {
        out.push_str(name);
        let labels = labels.as_ref();
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
                .collect();
            out.push_str(&format!("{{{}}}", pairs.join(",")));
        }
        out.push_str(&format!(" {value}\n"));
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_family_is_written_with_help_type_and_escaped_labels() {
        let mut out = String::new();
        write_counter(
            &mut out,
            "kreach_x_total",
            "Things.",
            [(&[("reason", "a \"b\"")][..], 2), (&[][..], 5)],
        );
        assert_eq!(
            out,
            "# HELP kreach_x_total Things.\n# TYPE kreach_x_total counter\nkreach_x_total{reason=\"a \\\"b\\\"\"} 2\nkreach_x_total 5\n"
        );
    }
}
