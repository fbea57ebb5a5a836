//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), server side, as Kafka speaks them:
//! two SaslAuthenticate round trips, no channel binding, Kafka's minimum of 4096 iterations.
//!
//! Only salted credentials are stored (salt, iterations, StoredKey, ServerKey); the password
//! never is. The primitives (PBKDF2, HMAC, SHA-2) are the RustCrypto crates.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Iterations for new credentials (Kafka's default and minimum is 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// The most iterations accepted from a stored credential (cost bound).
pub const MAX_ITERATIONS: u32 = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl ScramMechanism {
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-256" => Some(ScramMechanism::Sha256),
            "SCRAM-SHA-512" => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            ScramMechanism::Sha512 => {
                let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
            ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
                out.to_vec()
            }
            ScramMechanism::Sha512 => {
                let mut out = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }
}

/// A stored SCRAM credential (what Kafka keeps in ZooKeeper/KRaft for a user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    pub mechanism: ScramMechanism,
    /// Base64.
    pub salt: String,
    pub iterations: u32,
    /// Base64 of H(ClientKey).
    pub stored_key: String,
    /// Base64 of HMAC(SaltedPassword, "Server Key").
    pub server_key: String,
}

impl ScramCredential {
    /// Derives the credential for `password` with a fresh random salt.
    pub fn new(mechanism: ScramMechanism, password: &str, iterations: u32) -> Self {
        let salt: [u8; 24] = rand::random();
        Self::with_salt(mechanism, password, &salt, iterations)
    }

    pub fn with_salt(
        mechanism: ScramMechanism,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Self {
        let salted = mechanism.salted_password(password, salt, iterations);
        let client_key = mechanism.hmac(&salted, b"Client Key");
        let stored_key = mechanism.hash(&client_key);
        let server_key = mechanism.hmac(&salted, b"Server Key");
        ScramCredential {
            mechanism,
            salt: B64.encode(salt),
            iterations,
            stored_key: B64.encode(stored_key),
            server_key: B64.encode(server_key),
        }
    }

    /// Checks a plain password against this credential (SASL/PLAIN).
    pub fn matches_password(&self, password: &str) -> bool {
        let Ok(salt) = B64.decode(&self.salt) else {
            return false;
        };
        if self.iterations > MAX_ITERATIONS {
            return false;
        }
        let derived = Self::with_salt(self.mechanism, password, &salt, self.iterations);
        derived
            .stored_key
            .as_bytes()
            .ct_eq(self.stored_key.as_bytes())
            .into()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("unknown user")]
    UnknownUser,
    #[error("nonce mismatch")]
    Nonce,
    #[error("invalid proof")]
    BadProof,
}

/// The client-first message, parsed.
#[derive(Debug, Clone)]
pub struct ClientFirst {
    pub username: String,
    client_nonce: String,
    bare: String,
}

/// Parses `gs2-header client-first-message-bare`.
pub fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, ScramError> {
    let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let (cb, rest) = msg
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    match cb {
        "n" | "y" => {}
        _ => return Err(ScramError::ChannelBinding),
    }
    // authzid (may be empty), then the bare message.
    let (_authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    let mut username = None;
    let mut nonce = None;
    for attr in bare.split(',') {
        if let Some(v) = attr.strip_prefix("n=") {
            username = Some(decode_saslname(v)?);
        } else if let Some(v) = attr.strip_prefix("r=") {
            nonce = Some(v.to_string());
        } else if attr.starts_with("m=") {
            return Err(ScramError::Malformed("mandatory extension not supported"));
        }
    }
    let username = username.ok_or(ScramError::Malformed("no username"))?;
    let client_nonce = nonce.ok_or(ScramError::Malformed("no nonce"))?;
    if client_nonce.is_empty()
        || !client_nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(ScramError::Malformed("bad nonce"));
    }
    Ok(ClientFirst {
        username,
        client_nonce,
        bare: bare.to_string(),
    })
}

fn decode_saslname(v: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("=2C") {
            out.push(',');
        } else if tail.starts_with("=3D") {
            out.push('=');
        } else {
            return Err(ScramError::Malformed("bad username escape"));
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The server between its first message and the client's final one.
#[derive(Debug)]
pub struct ScramServer {
    credential: ScramCredential,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// Answers the client-first message with the server-first one.
    pub fn start(first: &ClientFirst, credential: ScramCredential) -> (Self, Vec<u8>) {
        let server_nonce: [u8; 18] = rand::random();
        let nonce = format!("{}{}", first.client_nonce, B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            credential.salt, credential.iterations
        );
        let reply = server_first.clone().into_bytes();
        (
            ScramServer {
                credential,
                client_first_bare: first.bare.clone(),
                server_first,
                nonce,
            },
            reply,
        )
    }

    /// Verifies the client-final message; on success returns the server-final message.
    pub fn finish(self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                channel = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        // "n,," and "y,," base64-encoded: no channel binding, no authzid.
        match channel {
            Some("biws") | Some("eSws") => {}
            Some(_) => return Err(ScramError::ChannelBinding),
            None => return Err(ScramError::Malformed("no channel binding attribute")),
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let stored_key = B64
            .decode(&self.credential.stored_key)
            .map_err(|_| ScramError::Malformed("stored credential"))?;
        let server_key = B64
            .decode(&self.credential.server_key)
            .map_err(|_| ScramError::Malformed("stored credential"))?;
        if proof.len() != stored_key.len() {
            return Err(ScramError::BadProof);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let mech = self.credential.mechanism;
        let client_signature = mech.hmac(&stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let ok: bool = mech.hash(&client_key).ct_eq(&stored_key).into();
        if !ok {
            return Err(ScramError::BadProof);
        }
        let server_signature = mech.hmac(&server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: the SCRAM-SHA-256 exchange for user "user", password "pencil".
    #[test]
    fn rfc7677_sha256_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let cred = ScramCredential::with_salt(ScramMechanism::Sha256, "pencil", &salt, 4096);
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first.username, "user");
        let server = ScramServer {
            credential: cred,
            client_first_bare: first.bare.clone(),
            server_first:
                "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
                    .into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
        };
        let fin = server
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(
            fin,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
        );
    }

    fn client_proof(
        mech: ScramMechanism,
        password: &str,
        salt: &[u8],
        i: u32,
        auth: &str,
    ) -> String {
        let salted = mech.salted_password(password, salt, i);
        let client_key = mech.hmac(&salted, b"Client Key");
        let stored = mech.hash(&client_key);
        let sig = mech.hmac(&stored, auth.as_bytes());
        B64.encode(
            client_key
                .iter()
                .zip(sig)
                .map(|(a, b)| a ^ b)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn sha512_exchange_and_wrong_password() {
        for (password, ok) in [("secret", true), ("wrong", false)] {
            let cred = ScramCredential::new(ScramMechanism::Sha512, "secret", 4096);
            let first = parse_client_first(b"n,,n=alice,r=abcdef").unwrap();
            let (server, reply) = ScramServer::start(&first, cred.clone());
            let reply = String::from_utf8(reply).unwrap();
            let nonce = reply
                .split(',')
                .next()
                .unwrap()
                .strip_prefix("r=")
                .unwrap()
                .to_string();
            assert!(nonce.starts_with("abcdef"));
            let without = format!("c=biws,r={nonce}");
            let auth = format!("n=alice,r=abcdef,{reply},{without}");
            let salt = B64.decode(&cred.salt).unwrap();
            let proof = client_proof(ScramMechanism::Sha512, password, &salt, 4096, &auth);
            let result = server.finish(format!("{without},p={proof}").as_bytes());
            assert_eq!(result.is_ok(), ok, "{result:?}");
        }
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            parse_client_first(b"p=tls-unique,,n=a,r=b").unwrap_err(),
            ScramError::ChannelBinding
        );
        assert!(parse_client_first(b"n,,r=b").is_err());
        assert!(parse_client_first(b"garbage").is_err());
        assert_eq!(
            parse_client_first(b"n,,n=a=2Cb,r=x").unwrap().username,
            "a,b"
        );
        assert!(parse_client_first(b"n,,n=a=zz,r=x").is_err());
    }

    #[test]
    fn plain_password_check() {
        let cred = ScramCredential::new(ScramMechanism::Sha256, "pw", 4096);
        assert!(cred.matches_password("pw"));
        assert!(!cred.matches_password("pw2"));
    }
}
