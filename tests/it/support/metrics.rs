//! Reading one value out of the daemon's Prometheus/OpenMetrics text (`GET /metrics`).

/// Parses `name` or `name{k="v",…}` (also a sample line without its value).
fn parse_series(s: &str) -> (String, Vec<(String, String)>) {
    let Some(open) = s.find('{') else {
        return (s.trim().to_owned(), Vec::new());
    };
    let name = s[..open].trim().to_owned();
    let mut labels = Vec::new();
    let mut rest = s[open + 1..].chars().peekable();
    loop {
        while rest.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            rest.next();
        }
        if matches!(rest.peek(), Some('}') | None) {
            break;
        }
        let key: String = rest.by_ref().take_while(|c| *c != '=').collect();
        if rest.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = rest.next() {
            match c {
                '\\' => match rest.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
    }
    (name, labels)
}

/// One sample line of an exposition: the name, the labels in their order, the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of Prometheus/OpenMetrics `text` (comments and blank lines skipped; a line whose
/// value is not a number is left out).
pub fn samples(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The value follows the series: after the closing brace, or after the name.
        let series_end = match line.rfind('}') {
            Some(i) => i + 1,
            None => line.find(char::is_whitespace).unwrap_or(line.len()),
        };
        let (series, value) = line.split_at(series_end);
        let Some(value) = value.split_whitespace().next() else {
            continue;
        };
        let (name, labels) = parse_series(series);
        if let Ok(value) = value.parse::<f64>() {
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
    }
    samples
}

/// The sum of the samples in Prometheus/OpenMetrics `text` matching `selector`.
pub fn metric_value(text: &str, selector: &str) -> Option<f64> {
    let (want_name, want_labels) = parse_series(selector);
    samples(text)
        .into_iter()
        .filter(|s| s.name == want_name && want_labels.iter().all(|l| s.labels.contains(l)))
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::{metric_value, samples};

    const TEXT: &str = "\
# HELP hookrelay_config_generation Config generation.
# TYPE hookrelay_config_generation gauge
hookrelay_config_generation 2
# TYPE hookrelay_config_reloads_total counter
hookrelay_config_reloads_total{result=\"ok\"} 1
hookrelay_config_reloads_total{result=\"error\"} 3
hookrelay_deliveries_total{instance_name=\"a\",outcome=\"success\"} 4
hookrelay_deliveries_total{outcome=\"failure\", instance_name=\"a\"} 5 1700000000
hookrelay_deliveries_total{instance_name=\"b,\\\"x\",outcome=\"success\"} 7
# EOF
";

    #[test]
    fn metric_value_selects_by_name_and_labels() {
        assert_eq!(metric_value(TEXT, "hookrelay_config_generation"), Some(2.0));
        assert_eq!(
            metric_value(TEXT, "hookrelay_config_reloads_total{result=\"ok\"}"),
            Some(1.0)
        );
        assert_eq!(
            metric_value(TEXT, "hookrelay_config_reloads_total{result=\"error\"}"),
            Some(3.0)
        );
        assert_eq!(
            metric_value(TEXT, "hookrelay_config_reloads_total"),
            Some(4.0)
        );
        assert_eq!(
            metric_value(TEXT, "hookrelay_deliveries_total{instance_name=\"a\"}"),
            Some(9.0)
        );
        assert_eq!(
            metric_value(
                TEXT,
                "hookrelay_deliveries_total{instance_name=\"b,\\\"x\"}"
            ),
            Some(7.0)
        );
        assert_eq!(metric_value(TEXT, "hookrelay_config"), None);
        assert_eq!(
            metric_value(TEXT, "hookrelay_config_reloads_total{result=\"other\"}"),
            None
        );
    }

    #[test]
    fn samples_keep_every_label() {
        let all = samples(TEXT);
        assert_eq!(all.len(), 6);
        assert_eq!(all[4].name, "hookrelay_deliveries_total");
        assert_eq!(all[4].label("outcome"), Some("failure"));
        assert_eq!(all[4].label("instance_name"), Some("a"));
        assert_eq!(all[4].value, 5.0);
        assert_eq!(all[5].label("instance_name"), Some("b,\"x"));
    }
}
