//! Kafka listeners, configured like Kafka's: a security protocol (PLAINTEXT, SSL,
//! SASL_PLAINTEXT, SASL_SSL), an address, the address advertised to clients, and the SASL
//! mechanisms offered; plus the connection limits every listener shares.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use weir_auth::Mechanism;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// A listener as configured: `PROTOCOL://HOST:PORT[?mechanisms=A+B&advertise=HOST:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub protocol: SecurityProtocol,
    pub addr: SocketAddr,
    pub advertise: Option<String>,
    pub mechanisms: Vec<Mechanism>,
}

impl FromStr for ListenerSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (proto, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("listener {s:?}: expected PROTOCOL://HOST:PORT"))?;
        let protocol = match proto.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => SecurityProtocol::Plaintext,
            "SSL" => SecurityProtocol::Ssl,
            "SASL_PLAINTEXT" => SecurityProtocol::SaslPlaintext,
            "SASL_SSL" => SecurityProtocol::SaslSsl,
            other => {
                return Err(format!(
                    "listener {s:?}: unknown protocol {other} (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"
                ))
            }
        };
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("listener {s:?}: address {addr:?}: {e}"))?;
        let mut advertise = None;
        let mut mechanisms = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "advertise" => advertise = Some(v.to_string()),
                "mechanisms" => {
                    let list = v
                        .split(['+', ' '])
                        .filter(|m| !m.is_empty())
                        .map(|m| {
                            Mechanism::from_name(&m.to_ascii_uppercase()).ok_or_else(|| {
                                format!("listener {s:?}: unknown SASL mechanism {m}")
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    mechanisms = Some(list);
                }
                other => return Err(format!("listener {s:?}: unknown option {other}")),
            }
        }
        let mechanisms = match (protocol.sasl(), mechanisms) {
            (false, Some(_)) => {
                return Err(format!(
                    "listener {s:?}: mechanisms apply only to SASL_PLAINTEXT and SASL_SSL"
                ))
            }
            (false, None) => Vec::new(),
            (true, None) => Mechanism::defaults(),
            (true, Some(list)) if list.is_empty() => {
                return Err(format!("listener {s:?}: no SASL mechanism"))
            }
            (true, Some(list)) => list,
        };
        if mechanisms.contains(&Mechanism::Plain) && protocol != SecurityProtocol::SaslSsl {
            return Err(format!(
                "listener {s:?}: PLAIN sends passwords in the clear; it is allowed on SASL_SSL only"
            ));
        }
        if mechanisms.contains(&Mechanism::AwsMskIam) && protocol != SecurityProtocol::SaslSsl {
            // The Java library refuses anything but SASL_SSL as well.
            tracing::warn!(listener = s, "AWS_MSK_IAM on a listener without TLS");
        }
        Ok(ListenerSpec {
            protocol,
            addr,
            advertise,
            mechanisms,
        })
    }
}

/// A bound listener's settings, shared by its connections.
pub struct Listener {
    pub protocol: SecurityProtocol,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub mechanisms: Vec<Mechanism>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The tenant cluster this listener serves (None: the default cluster).
    pub cluster: Option<Arc<crate::namespace::VirtualCluster>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("protocol", &self.protocol)
            .field("advertised", &self.bootstrap())
            .field("mechanisms", &self.mechanisms)
            .field("tls", &self.tls.is_some())
            .field("cluster", &self.cluster.as_ref().map(|c| &c.arn))
            .finish()
    }
}

impl Listener {
    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.advertised_host, self.advertised_port)
    }
}

/// Caps on open connections and on new connections per second (over all listeners). A
/// connection over either cap is closed at once: clients see a disconnect, which they
/// retry with backoff, and the gateway keeps serving the ones it has.
#[derive(Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_per_second: u32,
    open: AtomicUsize,
    bucket: Mutex<(Instant, f64)>,
}

impl ConnectionLimits {
    pub fn new(max_connections: usize, max_per_second: u32) -> Self {
        ConnectionLimits {
            max_connections,
            max_per_second,
            open: AtomicUsize::new(0),
            bucket: Mutex::new((Instant::now(), f64::from(max_per_second))),
        }
    }

    /// Admits a new connection, or says why not.
    pub fn admit(self: &Arc<Self>) -> Result<ConnectionPermit, &'static str> {
        {
            let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let rate = f64::from(self.max_per_second);
            let refill = now.duration_since(bucket.0).as_secs_f64() * rate;
            bucket.1 = (bucket.1 + refill).min(rate.max(1.0));
            bucket.0 = now;
            if bucket.1 < 1.0 {
                return Err("connection rate limit");
            }
            bucket.1 -= 1.0;
        }
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open >= self.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err("connection limit");
        }
        Ok(ConnectionPermit(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Held by a connection while it is open.
#[derive(Debug)]
pub struct ConnectionPermit(Arc<ConnectionLimits>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_listener_specs() {
        let l: ListenerSpec = "SASL_SSL://127.0.0.1:9098".parse().unwrap();
        assert_eq!(l.protocol, SecurityProtocol::SaslSsl);
        assert_eq!(l.mechanisms, Mechanism::defaults());
        let l: ListenerSpec =
            "sasl_ssl://127.0.0.1:9096?mechanisms=SCRAM-SHA-512+PLAIN&advertise=broker:9096"
                .parse()
                .unwrap();
        assert_eq!(l.mechanisms, vec![Mechanism::ScramSha512, Mechanism::Plain]);
        assert_eq!(l.advertise.as_deref(), Some("broker:9096"));
        let l: ListenerSpec = "PLAINTEXT://127.0.0.1:9092".parse().unwrap();
        assert!(l.mechanisms.is_empty());
        for bad in [
            "127.0.0.1:9092",
            "HTTP://127.0.0.1:1",
            "SASL_PLAINTEXT://127.0.0.1:1?mechanisms=PLAIN",
            "SASL_SSL://127.0.0.1:1?mechanisms=KERBEROS",
            "PLAINTEXT://127.0.0.1:1?mechanisms=PLAIN",
            "SSL://nohost",
        ] {
            assert!(bad.parse::<ListenerSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_connections() {
        let limits = Arc::new(ConnectionLimits::new(2, 1000));
        let a = limits.admit().unwrap();
        let _b = limits.admit().unwrap();
        assert!(limits.admit().is_err());
        drop(a);
        assert!(limits.admit().is_ok());
        let slow = Arc::new(ConnectionLimits::new(100, 2));
        assert!(slow.admit().is_ok());
        assert!(slow.admit().is_ok());
        assert!(slow.admit().is_err());
    }
}
