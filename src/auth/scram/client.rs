//! Client role: logging pgsluice into PostgreSQL.

use super::{
    attr, b64_32, check_extensions, derive_keys_cached, hmac, new_nonce, nonce_text, sha256,
    split_attrs, xor32, ScramError, ScramKeys, B64, MAX_SERVER_ITERATIONS, SERVER_ERROR_MAX,
};
use crate::auth::ct_eq;
use base64::Engine;

/// What pgsluice logs into PostgreSQL with.
#[derive(Clone)]
pub enum ClientCredential {
    /// A cleartext password; keys are derived from the server's salt and iteration count.
    Password(String),
    /// Keys recovered from a client's SCRAM login (pass-through). They only work when the
    /// server's secret has the salt and iteration count they were derived with.
    Keys(ScramKeys),
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCredential::Password(_) => f.write_str("Password(..)"),
            ClientCredential::Keys(_) => f.write_str("Keys(..)"),
        }
    }
}

enum ClientState {
    Start,
    SentFirst {
        client_first_bare: String,
        nonce: String,
    },
    SentFinal {
        server_signature: [u8; 32],
    },
    Done,
}

/// One SCRAM exchange with a PostgreSQL server, pgsluice playing the client.
///
/// Send [`client_first`](Self::client_first) in SASLInitialResponse, pass the
/// AuthenticationSASLContinue payload to [`handle_server_first`](Self::handle_server_first)
/// and send its result in SASLResponse, then pass the AuthenticationSASLFinal payload to
/// [`handle_server_final`](Self::handle_server_final). Any error ends the exchange.
///
/// With a password, the derived keys are cached process-wide by (password, salt,
/// iterations), so repeated server logins skip the PBKDF2 run.
pub struct ScramClient {
    credential: ClientCredential,
    /// Sent as `n=`. PostgreSQL ignores it and libpq sends it empty; tests set it to
    /// reproduce RFC 7677's exchange.
    user: String,
    /// Fixed client nonce for reproducing published exchanges in tests.
    nonce_override: Option<String>,
    state: ClientState,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramClient(..)")
    }
}

impl ScramClient {
    pub fn new(credential: ClientCredential) -> Self {
        ScramClient {
            credential,
            user: String::new(),
            nonce_override: None,
            state: ClientState::Start,
        }
    }

    /// The whole client-first-message, `n,,n=,r=<nonce>`. Calling it again restarts the
    /// exchange with a new nonce.
    pub fn client_first(&mut self) -> Vec<u8> {
        let nonce = self.nonce_override.take().unwrap_or_else(new_nonce);
        let user = self.user.replace('=', "=3D").replace(',', "=2C");
        let client_first_bare = format!("n={user},r={nonce}");
        let msg = format!("n,,{client_first_bare}").into_bytes();
        self.state = ClientState::SentFirst {
            client_first_bare,
            nonce,
        };
        msg
    }

    /// Parses server-first-message and returns client-final-message
    /// `c=biws,r=<nonce>,p=<proof>`.
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        use ScramError::MalformedServerMessage as Bad;
        let state = std::mem::replace(&mut self.state, ClientState::Done);
        let ClientState::SentFirst {
            client_first_bare,
            nonce: client_nonce,
        } = state
        else {
            return Err(ScramError::OutOfOrder);
        };

        let parts = split_attrs(msg);
        let [r, s, i, extensions @ ..] = parts.as_slice() else {
            return Err(Bad("server-first-message is incomplete"));
        };
        if r.starts_with(b"m=") {
            return Err(Bad("mandatory extension is not supported"));
        }
        let nonce = attr(r, b'r')
            .and_then(nonce_text)
            .ok_or(Bad("missing or non-printable nonce"))?;
        if nonce.len() <= client_nonce.len() || !nonce.starts_with(&client_nonce) {
            return Err(Bad("server nonce does not extend the client nonce"));
        }
        let salt = attr(s, b's')
            .and_then(|v| B64.decode(v).ok())
            .filter(|salt| !salt.is_empty())
            .ok_or(Bad("missing or invalid salt"))?;
        let iterations = parse_iterations(attr(i, b'i').ok_or(Bad("missing iteration count"))?)?;
        check_extensions(extensions, Bad("malformed attribute"))?;

        let keys = match &self.credential {
            ClientCredential::Password(password) => derive_keys_cached(password, &salt, iterations),
            ClientCredential::Keys(keys) => keys.clone(),
        };
        // "biws" is base64("n,,"): no channel binding, as sent in client_first.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message: [&[u8]; 5] = [
            client_first_bare.as_bytes(),
            b",",
            msg,
            b",",
            without_proof.as_bytes(),
        ];
        let stored_key = sha256(&keys.client_key);
        let proof = xor32(&keys.client_key, &hmac(&stored_key, &auth_message));
        self.state = ClientState::SentFinal {
            server_signature: hmac(&keys.server_key, &auth_message),
        };
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks server-final-message `v=<server signature>` (or `e=<error>`).
    pub fn handle_server_final(&mut self, msg: &[u8]) -> Result<(), ScramError> {
        use ScramError::MalformedServerMessage as Bad;
        let state = std::mem::replace(&mut self.state, ClientState::Done);
        let ClientState::SentFinal { server_signature } = state else {
            return Err(ScramError::OutOfOrder);
        };
        let parts = split_attrs(msg);
        let [first, extensions @ ..] = parts.as_slice() else {
            return Err(Bad("server-final-message is empty"));
        };
        if let Some(error) = attr(first, b'e') {
            let text = String::from_utf8_lossy(error);
            return Err(ScramError::Server(
                text.chars().take(SERVER_ERROR_MAX).collect(),
            ));
        }
        let verifier = attr(first, b'v')
            .and_then(b64_32)
            .ok_or(Bad("missing or invalid server signature"))?;
        check_extensions(extensions, Bad("malformed attribute"))?;
        if ct_eq(&verifier, &server_signature) {
            Ok(())
        } else {
            Err(ScramError::InvalidServerSignature)
        }
    }
}

/// The `i=` value: decimal, positive, at most [`MAX_SERVER_ITERATIONS`].
fn parse_iterations(text: &[u8]) -> Result<u32, ScramError> {
    use ScramError::MalformedServerMessage as Bad;
    // 19 digits always fit a u64, so the parse below cannot overflow.
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return Err(Bad("iteration count is not a number"));
    }
    let n = text.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    match u32::try_from(n) {
        Ok(0) => Err(Bad("iteration count is zero")),
        Ok(n) if n <= MAX_SERVER_ITERATIONS => Ok(n),
        _ => Err(ScramError::TooManyIterations(n)),
    }
}

#[cfg(test)]
impl ScramClient {
    /// Fixes the `n=` user name and the client nonce, to reproduce published exchanges.
    pub(super) fn with_user_and_nonce(mut self, user: &str, nonce: &str) -> Self {
        self.user = user.to_owned();
        self.nonce_override = Some(nonce.to_owned());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::super::{derive_keys, tests::rfc7677 as rfc};
    use super::*;

    fn rfc_client(credential: ClientCredential) -> ScramClient {
        let mut client =
            ScramClient::new(credential).with_user_and_nonce("user", rfc::CLIENT_NONCE);
        assert_eq!(client.client_first(), rfc::CLIENT_FIRST.as_bytes());
        client
    }

    /// The client half of RFC 7677 section 3, byte for byte, from the password and from keys.
    #[test]
    fn rfc7677_client_side() {
        let salt = B64.decode(rfc::SALT).unwrap();
        let keys = derive_keys(rfc::PASSWORD, &salt, rfc::ITERATIONS);
        for credential in [
            ClientCredential::Password(rfc::PASSWORD.into()),
            ClientCredential::Keys(keys),
        ] {
            let mut client = rfc_client(credential);
            let last = client
                .handle_server_first(rfc::SERVER_FIRST.as_bytes())
                .unwrap();
            assert_eq!(last, rfc::CLIENT_FINAL.as_bytes());
            client
                .handle_server_final(rfc::SERVER_FINAL.as_bytes())
                .unwrap();
        }
    }

    #[test]
    fn default_client_first_has_empty_user_and_random_nonce() {
        let mut client = ScramClient::new(ClientCredential::Password("pw".into()));
        let first = client.client_first();
        let text = std::str::from_utf8(&first).unwrap();
        let nonce = text.strip_prefix("n,,n=,r=").unwrap();
        assert_eq!(nonce.len(), 24);
        assert!(nonce_text(nonce.as_bytes()).is_some());
        let again = ScramClient::new(ClientCredential::Password("pw".into())).client_first();
        assert_ne!(first, again);
    }

    #[test]
    fn wrong_server_signature_is_rejected() {
        let mut client = rfc_client(ClientCredential::Password("not pencil".into()));
        client
            .handle_server_first(rfc::SERVER_FIRST.as_bytes())
            .unwrap();
        let err = client
            .handle_server_final(rfc::SERVER_FINAL.as_bytes())
            .unwrap_err();
        assert_eq!(err, ScramError::InvalidServerSignature);
        assert_eq!(
            err.client_text(),
            "server login failed: invalid server signature"
        );
    }

    #[test]
    fn server_error_attribute_is_reported() {
        let mut client = rfc_client(ClientCredential::Password(rfc::PASSWORD.into()));
        client
            .handle_server_first(rfc::SERVER_FIRST.as_bytes())
            .unwrap();
        let err = client.handle_server_final(b"e=invalid-proof").unwrap_err();
        assert_eq!(err, ScramError::Server("invalid-proof".into()));
    }

    #[test]
    fn malformed_server_first_is_an_error() {
        let nonce = format!("r={}{}", rfc::CLIENT_NONCE, rfc::SERVER_NONCE);
        let salt = format!("s={}", rfc::SALT);
        let cases = [
            String::new(),
            nonce.clone(),
            format!("{nonce},{salt}"),
            format!("m=ext,{nonce},{salt},i=4096"),
            format!("{salt},{nonce},i=4096"),
            format!("r={},{salt},i=4096", rfc::CLIENT_NONCE),
            format!("r=other{},{salt},i=4096", rfc::SERVER_NONCE),
            format!("r=,{salt},i=4096"),
            format!("{nonce},s=,i=4096"),
            format!("{nonce},s=not*base64,i=4096"),
            format!("{nonce},{salt},i="),
            format!("{nonce},{salt},i=0"),
            format!("{nonce},{salt},i=-1"),
            format!("{nonce},{salt},i=4096x"),
            format!("{nonce},{salt},i=99999999999999999999999"),
            format!("{nonce},{salt},i=4096,junk"),
        ];
        for msg in cases {
            let mut client = rfc_client(ClientCredential::Password("pw".into()));
            let err = client.handle_server_first(msg.as_bytes()).unwrap_err();
            assert!(
                matches!(err, ScramError::MalformedServerMessage(_)),
                "{msg:?}: {err}"
            );
            assert_eq!(
                err.client_text(),
                "server login failed: failed to verify server signature"
            );
        }
    }

    #[test]
    fn huge_iteration_counts_are_refused_before_pbkdf2() {
        let nonce = format!("r={}{}", rfc::CLIENT_NONCE, rfc::SERVER_NONCE);
        for (count, expected) in [
            (
                MAX_SERVER_ITERATIONS as u64 + 1,
                ScramError::TooManyIterations(1_000_001),
            ),
            (
                u64::from(u32::MAX) + 1,
                ScramError::TooManyIterations(4_294_967_296),
            ),
        ] {
            let mut client = rfc_client(ClientCredential::Password("pw".into()));
            let msg = format!("{nonce},s={},i={count}", rfc::SALT);
            assert_eq!(client.handle_server_first(msg.as_bytes()), Err(expected));
        }
        assert_eq!(parse_iterations(b"1000000"), Ok(MAX_SERVER_ITERATIONS));
    }

    #[test]
    fn malformed_server_final_is_an_error() {
        let cases: &[&[u8]] = &[
            b"",
            b"v=",
            b"v=AAAA",
            b"v=***",
            b"x=1",
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,junk",
        ];
        for msg in cases {
            let mut client = rfc_client(ClientCredential::Password(rfc::PASSWORD.into()));
            client
                .handle_server_first(rfc::SERVER_FIRST.as_bytes())
                .unwrap();
            let err = client.handle_server_final(msg).unwrap_err();
            assert!(
                matches!(err, ScramError::MalformedServerMessage(_)),
                "{msg:?}: {err}"
            );
        }
    }

    #[test]
    fn out_of_order_calls_are_errors() {
        let mut client = ScramClient::new(ClientCredential::Password("pw".into()));
        let err = client
            .handle_server_first(rfc::SERVER_FIRST.as_bytes())
            .unwrap_err();
        assert_eq!(err, ScramError::OutOfOrder);
        let err = client
            .handle_server_final(rfc::SERVER_FINAL.as_bytes())
            .unwrap_err();
        assert_eq!(err, ScramError::OutOfOrder);
    }
}
