//! Server role: authenticating a connecting client against a stored secret, pgsluice
//! playing PostgreSQL.

use rand::RngCore;

use super::{
    attr, b64_32, check_extensions, hmac, new_nonce, nonce_text, process_key, sha256, split_attrs,
    xor32, ScramError, ScramKeys, B64, SALT_LEN,
};
use crate::auth::ct_eq;
use crate::config::ScramSecret;
use base64::Engine;

enum ServerState {
    Start,
    SentFirst {
        gs2_header: Vec<u8>,
        client_first_bare: Vec<u8>,
        server_first: Vec<u8>,
        nonce: String,
    },
    Done,
}

/// One SCRAM exchange with a connecting client, pgsluice playing PostgreSQL.
///
/// Call [`handle_client_first`](Self::handle_client_first) with the SASLInitialResponse
/// payload, then [`handle_client_final`](Self::handle_client_final) with the SASLResponse
/// payload. Any error ends the exchange.
pub struct ScramServer {
    secret: ScramSecret,
    /// Answers like a real user but never succeeds.
    mock: bool,
    /// Fixed server nonce for reproducing published exchanges in tests.
    nonce_override: Option<String>,
    state: ServerState,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramServer(..)")
    }
}

impl ScramServer {
    pub fn new(secret: ScramSecret) -> Self {
        ScramServer {
            secret,
            mock: false,
            nonce_override: None,
            state: ServerState::Start,
        }
    }

    /// An exchange for a user that does not exist, so that the answer looks like a real
    /// user's and ends in the same failure as a wrong password.
    ///
    /// The salt is derived from a per-process random key and the user name, so repeated
    /// attempts for one name see one salt, like a real user. `iterations` should be what
    /// real secrets use (usually [`DEFAULT_ITERATIONS`](super::DEFAULT_ITERATIONS)). The
    /// keys are random, and the proof is still checked against them so that the work done
    /// matches a real exchange.
    pub fn mock(user: &str, iterations: u32) -> Self {
        let salt = hmac(process_key(), &[b"mock salt", user.as_bytes()])[..SALT_LEN].to_vec();
        let mut stored_key = [0u8; 32];
        let mut server_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut stored_key);
        rand::thread_rng().fill_bytes(&mut server_key);
        let secret = ScramSecret {
            iterations: iterations.max(1),
            salt,
            stored_key,
            server_key,
        };
        ScramServer {
            mock: true,
            ..Self::new(secret)
        }
    }

    /// Parses client-first-message (`<gs2 header><client-first-bare>`) and returns
    /// server-first-message `r=<client nonce><server nonce>,s=<salt>,i=<iterations>`.
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        // Until the message is accepted the exchange counts as over: errors are final.
        let state = std::mem::replace(&mut self.state, ServerState::Done);
        if !matches!(state, ServerState::Start) {
            return Err(ScramError::OutOfOrder);
        }

        let bare = match msg {
            [b'n' | b'y', b',', rest @ ..] => rest,
            [b'p', b'=', ..] => return Err(ScramError::ChannelBindingUnsupported),
            _ => return Err(ScramError::Malformed("invalid channel-binding flag")),
        };
        let bare = match bare {
            [b',', rest @ ..] => rest,
            [b'a', b'=', ..] => {
                return Err(ScramError::Malformed(
                    "authorization identity is not supported",
                ))
            }
            _ => return Err(ScramError::Malformed("malformed GS2 header")),
        };
        let gs2_header = msg[..msg.len() - bare.len()].to_vec();

        let parts = split_attrs(bare);
        let [user, nonce, extensions @ ..] = parts.as_slice() else {
            return Err(ScramError::Malformed("client-first-message is incomplete"));
        };
        if user.starts_with(b"m=") {
            return Err(ScramError::Malformed(
                "mandatory extension is not supported",
            ));
        }
        // The value is ignored: PostgreSQL authenticates the startup packet's user.
        attr(user, b'n').ok_or(ScramError::Malformed("missing user name attribute"))?;
        let client_nonce = attr(nonce, b'r')
            .and_then(nonce_text)
            .ok_or(ScramError::Malformed("missing or non-printable nonce"))?;
        check_extensions(extensions, ScramError::Malformed("malformed attribute"))?;

        let server_nonce = self.nonce_override.take().unwrap_or_else(new_nonce);
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.secret.salt),
            self.secret.iterations
        )
        .into_bytes();
        self.state = ServerState::SentFirst {
            gs2_header,
            client_first_bare: bare.to_vec(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// Verifies client-final-message `c=<gs2 header>,r=<nonce>,p=<proof>`. On success returns
    /// server-final-message `v=<server signature>` and the client's recovered keys.
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<(Vec<u8>, ScramKeys), ScramError> {
        let state = std::mem::replace(&mut self.state, ServerState::Done);
        let ServerState::SentFirst {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = state
        else {
            return Err(ScramError::OutOfOrder);
        };

        let parts = split_attrs(msg);
        let [cbind, r, extensions @ .., proof_attr] = parts.as_slice() else {
            return Err(ScramError::Malformed("client-final-message is incomplete"));
        };
        let cbind =
            attr(cbind, b'c')
                .and_then(|v| B64.decode(v).ok())
                .ok_or(ScramError::Malformed(
                    "missing or invalid channel-binding attribute",
                ))?;
        // Without channel binding, c= must repeat the GS2 header of client-first-message.
        if cbind != gs2_header {
            return Err(ScramError::Malformed(
                "channel-binding attribute does not match",
            ));
        }
        if attr(r, b'r') != Some(nonce.as_bytes()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        check_extensions(extensions, ScramError::Malformed("malformed attribute"))?;
        let proof = attr(proof_attr, b'p')
            .and_then(b64_32)
            .ok_or(ScramError::Malformed("missing or invalid proof"))?;

        let without_proof = &msg[..msg.len() - proof_attr.len() - 1];
        let auth_message: [&[u8]; 5] =
            [&client_first_bare, b",", &server_first, b",", without_proof];
        let client_signature = hmac(&self.secret.stored_key, &auth_message);
        let client_key = xor32(&proof, &client_signature);
        let proof_ok = ct_eq(&sha256(&client_key), &self.secret.stored_key);
        if !proof_ok || self.mock {
            return Err(ScramError::AuthFailed);
        }
        let server_signature = hmac(&self.secret.server_key, &auth_message);
        let keys = ScramKeys {
            client_key,
            server_key: self.secret.server_key,
        };
        Ok((
            format!("v={}", B64.encode(server_signature)).into_bytes(),
            keys,
        ))
    }
}

#[cfg(test)]
impl ScramServer {
    /// Fixes the server nonce, to reproduce published exchanges.
    pub(super) fn with_server_nonce(mut self, nonce: &str) -> Self {
        self.nonce_override = Some(nonce.to_owned());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::super::{secret_from_password_salt, tests::rfc7677 as rfc};
    use super::*;

    fn rfc_server() -> ScramServer {
        let salt = B64.decode(rfc::SALT).unwrap();
        let secret = secret_from_password_salt(rfc::PASSWORD, &salt, rfc::ITERATIONS);
        ScramServer::new(secret).with_server_nonce(rfc::SERVER_NONCE)
    }

    /// The server half of RFC 7677 section 3, byte for byte.
    #[test]
    fn rfc7677_server_side() {
        let mut server = rfc_server();
        let first = server
            .handle_client_first(rfc::CLIENT_FIRST.as_bytes())
            .unwrap();
        assert_eq!(first, rfc::SERVER_FIRST.as_bytes());
        let (last, keys) = server
            .handle_client_final(rfc::CLIENT_FINAL.as_bytes())
            .unwrap();
        assert_eq!(last, rfc::SERVER_FINAL.as_bytes());
        let salt = B64.decode(rfc::SALT).unwrap();
        let expected = super::super::derive_keys(rfc::PASSWORD, &salt, rfc::ITERATIONS);
        assert_eq!(keys.client_key, expected.client_key);
        assert_eq!(keys.server_key, expected.server_key);
    }

    #[test]
    fn wrong_proof_fails() {
        let mut server = rfc_server();
        server
            .handle_client_first(rfc::CLIENT_FIRST.as_bytes())
            .unwrap();
        let mut proof = B64.decode(rfc::PROOF).unwrap();
        proof[0] ^= 1;
        let msg = format!(
            "{},p={}",
            rfc::CLIENT_FINAL_WITHOUT_PROOF,
            B64.encode(proof)
        );
        let err = server.handle_client_final(msg.as_bytes()).unwrap_err();
        assert_eq!(err, ScramError::AuthFailed);
        assert_eq!(err.client_text(), "SASL authentication failed");
    }

    #[test]
    fn user_name_attribute_is_ignored() {
        // PostgreSQL authenticates the startup user; `n=` may be empty or anything.
        let mut server = ScramServer::new(secret_from_password_salt("pw", b"salt", 8));
        let first = server
            .handle_client_first(b"y,,n=someone else,r=abc")
            .unwrap();
        assert!(first.starts_with(b"r=abc"));
    }

    #[test]
    fn channel_binding_and_authzid_are_refused() {
        let secret = secret_from_password_salt("pw", b"salt", 8);
        let mut server = ScramServer::new(secret.clone());
        let err = server
            .handle_client_first(b"p=tls-server-end-point,,n=,r=abc")
            .unwrap_err();
        assert_eq!(err, ScramError::ChannelBindingUnsupported);
        let mut server = ScramServer::new(secret);
        let err = server.handle_client_first(b"n,a=bob,n=,r=abc").unwrap_err();
        assert!(matches!(err, ScramError::Malformed(_)));
    }

    #[test]
    fn malformed_client_first_is_an_error() {
        let cases: &[&[u8]] = &[
            b"",
            b"n",
            b"n,,",
            b"x,,n=,r=abc",
            b"n,,n=",
            b"n,,r=abc",
            b"n,,n=,r=",
            b"n,,n=,r=ab c",
            b"n,,n=,r=ab\xffc",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=,r=abc,junk",
            b"n,,n=,x=abc",
        ];
        for msg in cases {
            let mut server = ScramServer::new(secret_from_password_salt("pw", b"salt", 8));
            let err = server.handle_client_first(msg).unwrap_err();
            assert!(matches!(err, ScramError::Malformed(_)), "{msg:?}: {err}");
        }
    }

    #[test]
    fn malformed_client_final_is_an_error() {
        let nonce = format!("r={}{}", rfc::CLIENT_NONCE, rfc::SERVER_NONCE);
        let cases = [
            String::new(),
            "c=biws".to_owned(),
            format!("c=biws,{nonce}"),
            format!("c=biws,{nonce},p="),
            format!("c=biws,{nonce},p=!!!notbase64"),
            format!("c=biws,{nonce},p=AAAA"),
            format!("c=eSws,{nonce},p={}", rfc::PROOF),
            format!("c=*,{nonce},p={}", rfc::PROOF),
            format!("c=biws,r={},p={}", rfc::CLIENT_NONCE, rfc::PROOF),
            format!("c=biws,{nonce}x,p={}", rfc::PROOF),
            format!("c=biws,{nonce},junk,p={}", rfc::PROOF),
            format!("c=biws,{nonce},p={},x=1", rfc::PROOF),
        ];
        for msg in cases {
            let mut server = rfc_server();
            server
                .handle_client_first(rfc::CLIENT_FIRST.as_bytes())
                .unwrap();
            let err = server.handle_client_final(msg.as_bytes()).unwrap_err();
            assert!(matches!(err, ScramError::Malformed(_)), "{msg:?}: {err}");
        }
    }

    #[test]
    fn out_of_order_calls_end_the_exchange() {
        let mut server = rfc_server();
        let err = server
            .handle_client_final(rfc::CLIENT_FINAL.as_bytes())
            .unwrap_err();
        assert_eq!(err, ScramError::OutOfOrder);
        let err = server
            .handle_client_first(rfc::CLIENT_FIRST.as_bytes())
            .unwrap_err();
        assert_eq!(err, ScramError::OutOfOrder);

        // A failed final message cannot be retried with a correct one.
        let mut server = rfc_server();
        server
            .handle_client_first(rfc::CLIENT_FIRST.as_bytes())
            .unwrap();
        assert!(server.handle_client_final(b"garbage").is_err());
        let err = server
            .handle_client_final(rfc::CLIENT_FINAL.as_bytes())
            .unwrap_err();
        assert_eq!(err, ScramError::OutOfOrder);
    }

    #[test]
    fn server_nonces_are_fresh_and_printable() {
        let secret = secret_from_password_salt("pw", b"salt", 8);
        let mut a = ScramServer::new(secret.clone());
        let mut b = ScramServer::new(secret);
        let a = a.handle_client_first(b"n,,n=,r=abc").unwrap();
        let b = b.handle_client_first(b"n,,n=,r=abc").unwrap();
        assert_ne!(a, b);
        let nonce = attr(split_attrs(&a)[0], b'r').unwrap();
        assert_eq!(nonce.len(), 3 + 24);
        assert!(nonce_text(nonce).is_some());
    }

    #[test]
    fn mock_looks_stable_per_user_and_always_fails() {
        let salt_of = |server: &mut ScramServer| {
            let first = server.handle_client_first(b"n,,n=,r=abc").unwrap();
            let parts = split_attrs(&first);
            assert_eq!(parts[2], b"i=4096");
            B64.decode(attr(parts[1], b's').unwrap()).unwrap()
        };
        let one = salt_of(&mut ScramServer::mock("alice", 4096));
        assert_eq!(one.len(), SALT_LEN);
        assert_eq!(one, salt_of(&mut ScramServer::mock("alice", 4096)));
        assert_ne!(one, salt_of(&mut ScramServer::mock("bob", 4096)));

        // Even a proof computed from the mock's own salt and nonce with any password fails.
        let mut mock = ScramServer::mock("alice", 4096).with_server_nonce("xyz");
        let first = mock.handle_client_first(b"n,,n=,r=abc").unwrap();
        let mut client = super::super::ScramClient::new(super::super::ClientCredential::Password(
            "guess".into(),
        ))
        .with_user_and_nonce("", "abc");
        client.client_first();
        let last = client.handle_server_first(&first).unwrap();
        assert_eq!(
            mock.handle_client_final(&last).unwrap_err(),
            ScramError::AuthFailed
        );
    }
}
