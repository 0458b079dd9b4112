//! An embedded MQTT 3.1.1 broker (rumqttd) on 127.0.0.1, so `demo` and the tests need no
//! external broker.
//!
//! rumqttd has no shutdown API and its `Broker::start` blocks forever on its own threads, so the
//! broker lives on a detached thread until the process exits. It also cannot report the port it
//! bound, so a free port is found first by binding and releasing it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Largest publish the broker accepts. Tests push 1 MB of garbage through it.
const MAX_PAYLOAD: usize = 4 * 1024 * 1024;
/// How long to wait for the broker to accept connections before giving up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running embedded broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedBroker {
    /// The port on 127.0.0.1 it accepts MQTT connections on.
    pub port: u16,
}

fn config(addr: SocketAddr) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PAYLOAD,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4-local".to_string(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            // A commit log per filter keeps at most count * size bytes: room for several
            // maximum-size publishes without holding much memory in a small service.
            max_segment_size: 2 * MAX_PAYLOAD,
            max_segment_count: 4,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("v4-local".to_string(), server)])),
        ..Config::default()
    }
}

/// Starts rumqttd on 127.0.0.1:`port` (0 picks a free port) and returns once it accepts TCP
/// connections. Anonymous clients are allowed.
pub fn start_embedded_broker(port: u16) -> anyhow::Result<EmbeddedBroker> {
    // Binding first both finds a free port for 0 and turns "port in use" into a clear error
    // (rumqttd would only log it on its own thread).
    let port = {
        let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("MQTT broker port {port} on 127.0.0.1 is not available"))?;
        probe.local_addr()?.port()
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let cfg = config(addr);
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".to_string())
        .spawn(move || {
            let mut broker = Broker::new(cfg);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .context("spawning the embedded MQTT broker thread")?;

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if thread.is_finished() {
            bail!("embedded MQTT broker on {addr} failed to start");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            tracing::debug!(%addr, "embedded MQTT broker accepting connections");
            return Ok(EmbeddedBroker { port });
        }
        if Instant::now() >= deadline {
            bail!(
                "embedded MQTT broker on {addr} did not accept connections within {STARTUP_TIMEOUT:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    async fn client(
        id: &str,
        port: u16,
    ) -> (AsyncClient, tokio::sync::mpsc::UnboundedReceiver<Packet>) {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(MAX_PAYLOAD, MAX_PAYLOAD);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(p) = event
                    && tx.send(p).is_err()
                {
                    break;
                }
            }
        });
        (client, rx)
    }

    async fn next_publish(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Packet>,
    ) -> rumqttc::Publish {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(Packet::Publish(p)) = rx.recv().await {
                    return p;
                }
            }
        })
        .await
        .expect("a publish within the timeout")
    }

    async fn wait_suback(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Packet>) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !matches!(rx.recv().await, Some(Packet::SubAck(_))) {}
        })
        .await
        .expect("a suback within the timeout");
    }

    #[tokio::test]
    async fn two_brokers_on_port_zero_get_distinct_ports_and_route_a_megabyte_publish() {
        let a = start_embedded_broker(0).unwrap();
        let b = start_embedded_broker(0).unwrap();
        assert_ne!(a.port, b.port);

        let (sub, mut sub_rx) = client("sub", a.port).await;
        sub.subscribe("big/#", QoS::AtLeastOnce).await.unwrap();
        wait_suback(&mut sub_rx).await;
        let (publ, _publ_rx) = client("pub", a.port).await;
        let payload = vec![0xFFu8; 1_000_000];
        publ.publish("big/one", QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
        let got = next_publish(&mut sub_rx).await;
        assert_eq!(got.topic, "big/one");
        assert_eq!(got.payload.len(), payload.len());
    }

    #[tokio::test]
    async fn a_retained_message_reaches_a_later_subscriber() {
        let broker = start_embedded_broker(0).unwrap();
        let (publ, mut publ_rx) = client("pub", broker.port).await;
        publ.publish("dev/availability", QoS::AtLeastOnce, true, "online")
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !matches!(publ_rx.recv().await, Some(Packet::PubAck(_))) {}
        })
        .await
        .unwrap();
        let (sub, mut sub_rx) = client("sub", broker.port).await;
        sub.subscribe("dev/#", QoS::AtLeastOnce).await.unwrap();
        let got = next_publish(&mut sub_rx).await;
        assert_eq!(&got.payload[..], b"online");
    }

    #[test]
    fn a_port_already_in_use_is_reported_as_an_error() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = start_embedded_broker(port).unwrap_err();
        assert!(err.to_string().contains("not available"), "{err:#}");
    }
}
