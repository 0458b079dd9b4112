//! The example config's placeholders: the values in `config.example.yaml` that stand for the
//! user's own (the broker's address, the dongle's ID, the broker login). A config that still
//! has them is valid but cannot reach the inverter, so `check-config` and `serve` name each
//! one to change.

use std::fmt;

use crate::config::{self, Config, EnvOverrides};

/// The shipped example, read at build time so that the check follows the file.
const EXAMPLE: &str = include_str!("../../config.example.yaml");

/// A placeholder left in a config: its key and what to put there instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub key: &'static str,
    pub message: String,
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

const NO_LOGIN: &str = "or remove mqtt.username and mqtt.password for a broker without login";

/// The example's placeholders still in `config`, in the file's order.
pub fn placeholders(config: &Config) -> Vec<Placeholder> {
    let Ok(example) = config::parse(EXAMPLE, &EnvOverrides::default()) else {
        return Vec::new(); // a unit test keeps the example valid
    };
    let (mine, theirs) = (&config.mqtt, &example.config.mqtt);
    let mut found = Vec::new();
    if mine.host == theirs.host {
        found.push(Placeholder {
            key: "mqtt.host",
            message: format!(
                "{:?} is the example's address: set your MQTT broker's (the one the dongle publishes to)",
                mine.host
            ),
        });
    }
    let same_password = match (&mine.password, &theirs.password) {
        (Some(a), Some(b)) => a.expose() == b.expose(),
        _ => false,
    };
    // A user name like the example's is plausible on its own; with the example's password
    // it is the example's login.
    if same_password && mine.username.is_some() && mine.username == theirs.username {
        found.push(Placeholder {
            key: "mqtt.username",
            message: format!(
                "{:?} is the example's: set your broker's user name, {NO_LOGIN}",
                mine.username.as_deref().unwrap_or_default()
            ),
        });
    }
    if same_password {
        found.push(Placeholder {
            key: "mqtt.password",
            message: format!(
                "is the example's placeholder: set your broker's password, {NO_LOGIN}"
            ),
        });
    }
    if mine.dongle_prefix == theirs.dongle_prefix {
        found.push(Placeholder {
            key: "mqtt.dongle_prefix",
            message: format!(
                "{:?} is the example's: set your dongle's ID as its topics on the broker show it (`solar-charging-backend discover` lists the dongles publishing on the broker; `mosquitto_sub -v -t '#'` prints topics like dongle-40:4C:CA:xx:xx:xx/inputbank1)",
                mine.dongle_prefix
            ),
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Config {
        config::parse(yaml, &EnvOverrides::default())
            .expect("valid")
            .config
    }

    fn keys(c: &Config) -> Vec<&'static str> {
        placeholders(c).into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn the_untouched_example_has_every_placeholder() {
        let example = parse(EXAMPLE);
        assert_eq!(
            keys(&example),
            [
                "mqtt.host",
                "mqtt.username",
                "mqtt.password",
                "mqtt.dongle_prefix"
            ]
        );
        let text: Vec<String> = placeholders(&example)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            text.iter().all(|t| !t.contains("change-me")),
            "no password is printed, even the example's: {text:?}"
        );
    }

    #[test]
    fn a_config_with_its_own_values_has_none() {
        let own = parse(
            "mqtt: {host: broker.lan, username: solar, password: s3cret, dongle_prefix: \"dongle-40:4C:CA:12:34:56\"}\n",
        );
        assert!(placeholders(&own).is_empty(), "{:?}", placeholders(&own));
        let anonymous = parse("mqtt: {host: 10.0.0.2, dongle_prefix: dongle-40:4C:CA:12:34:56}\n");
        assert!(placeholders(&anonymous).is_empty());
    }

    #[test]
    fn each_placeholder_left_is_named_alone() {
        let c = parse(
            "mqtt: {host: 10.0.0.2, username: me, password: change-me, dongle_prefix: \"dongle-40:4C:CA:AB:CD:EF\"}\n",
        );
        assert_eq!(keys(&c), ["mqtt.password", "mqtt.dongle_prefix"]);
    }
}
