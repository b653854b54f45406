//! Tests across both roles: secrets, interoperability and pass-through.

use super::*;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

/// The example exchange of RFC 7677 section 3 (user "user", password "pencil").
pub(super) mod rfc7677 {
    pub const PASSWORD: &str = "pencil";
    pub const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    pub const ITERATIONS: u32 = 4096;
    pub const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    pub const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    pub const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    pub const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    pub const CLIENT_FINAL_WITHOUT_PROOF: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    pub const PROOF: &str = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    pub const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    pub const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
}

/// Small iteration counts keep the debug-build tests fast; the maths does not depend on it.
const ITER: u32 = 64;

/// Parses the `SCRAM-SHA-256$iter:salt$stored:server` text (the config module owns the real
/// parser; this one only checks [`format_secret`] round trips and foreign secrets).
fn parse_secret(text: &str) -> ScramSecret {
    let rest = text.strip_prefix("SCRAM-SHA-256$").unwrap();
    let (iter_salt, keys) = rest.split_once('$').unwrap();
    let (iterations, salt) = iter_salt.split_once(':').unwrap();
    let (stored, server) = keys.split_once(':').unwrap();
    ScramSecret {
        iterations: iterations.parse().unwrap(),
        salt: B64.decode(salt).unwrap(),
        stored_key: B64.decode(stored).unwrap().try_into().unwrap(),
        server_key: B64.decode(server).unwrap().try_into().unwrap(),
    }
}

/// Runs a whole exchange between our client and our server.
fn exchange(client: &mut ScramClient, server: &mut ScramServer) -> Result<ScramKeys, ScramError> {
    let first = server.handle_client_first(&client.client_first())?;
    let last = client.handle_server_first(&first)?;
    let (server_final, keys) = server.handle_client_final(&last)?;
    client.handle_server_final(&server_final)?;
    Ok(keys)
}

#[test]
fn rfc7677_secret_and_format_round_trip() {
    let salt = B64.decode(rfc7677::SALT).unwrap();
    let secret = secret_from_password_salt(rfc7677::PASSWORD, &salt, rfc7677::ITERATIONS);
    let text = format_secret(&secret);
    assert!(text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
    assert_eq!(parse_secret(&text), secret);
    assert!(verify_password(&secret, rfc7677::PASSWORD));
    assert!(!verify_password(&secret, "pencil "));
}

#[test]
fn random_salts_differ_and_zero_iterations_become_one() {
    let a = secret_from_password("pw", ITER);
    let b = secret_from_password("pw", ITER);
    assert_eq!(a.salt.len(), 16);
    assert_ne!(a.salt, b.salt);
    assert_eq!(secret_from_password_salt("pw", b"s", 0).iterations, 1);
}

#[test]
fn secrets_from_postgres_protocol_verify() {
    // postgres-protocol builds secrets the way libpq's PQencryptPasswordConn does.
    let secret = parse_secret(&postgres_protocol::password::scram_sha_256(b"hunter2"));
    assert!(verify_password(&secret, "hunter2"));
    assert!(!verify_password(&secret, "hunter3"));
}

#[test]
fn saslprep_is_applied_with_raw_fallback() {
    // U+00A0 (no-break space) maps to a plain space under SASLprep.
    let nbsp = derive_keys("a\u{a0}b", b"salt", ITER);
    let space = derive_keys("a b", b"salt", ITER);
    assert_eq!(nbsp.client_key, space.client_key);
    // A control character makes SASLprep fail: the raw bytes are used, not an error.
    let bell = derive_keys("a\u{7}b", b"salt", ITER);
    assert_eq!(
        bell.client_key,
        hmac(&hi(b"a\x07b", b"salt", ITER), &[b"Client Key"])
    );
}

#[test]
fn cached_derivation_matches_uncached() {
    for _ in 0..2 {
        let cached = derive_keys_cached("pw", b"salt", ITER);
        let fresh = derive_keys("pw", b"salt", ITER);
        assert_eq!(cached.client_key, fresh.client_key);
        assert_eq!(cached.server_key, fresh.server_key);
    }
    let other = derive_keys_cached("pw", b"salt2", ITER);
    assert_ne!(
        other.client_key,
        derive_keys("pw", b"salt", ITER).client_key
    );
}

#[test]
fn password_client_against_server() {
    let secret = secret_from_password("correct horse", ITER);
    let mut client = ScramClient::new(ClientCredential::Password("correct horse".into()));
    let keys = exchange(&mut client, &mut ScramServer::new(secret.clone())).unwrap();
    let expected = derive_keys("correct horse", &secret.salt, ITER);
    assert_eq!(keys.client_key, expected.client_key);
    assert_eq!(keys.server_key, secret.server_key);

    let mut client = ScramClient::new(ClientCredential::Password("battery staple".into()));
    let err = exchange(&mut client, &mut ScramServer::new(secret)).unwrap_err();
    assert_eq!(err, ScramError::AuthFailed);
}

#[test]
fn recovered_keys_pass_through_to_a_server_with_the_same_secret() {
    let secret = secret_from_password("pw", ITER);
    let mut client = ScramClient::new(ClientCredential::Password("pw".into()));
    let keys = exchange(&mut client, &mut ScramServer::new(secret.clone())).unwrap();

    // The pooler logs into "PostgreSQL" with the keys alone, several times.
    for _ in 0..2 {
        let mut client = ScramClient::new(ClientCredential::Keys(keys.clone()));
        exchange(&mut client, &mut ScramServer::new(secret.clone())).unwrap();
    }

    // With another salt (a different secret for the same password) the keys do not work.
    let other = secret_from_password("pw", ITER);
    let mut client = ScramClient::new(ClientCredential::Keys(keys));
    let err = exchange(&mut client, &mut ScramServer::new(other)).unwrap_err();
    assert_eq!(err, ScramError::AuthFailed);
}

#[test]
fn server_signature_from_an_impostor_is_rejected() {
    // A server holding a secret for another password cannot produce our expected signature,
    // even if it (wrongly) accepts the proof.
    let real = secret_from_password_salt("pw", b"salt", ITER);
    let fake = secret_from_password_salt("other", b"salt", ITER);
    let mut client = ScramClient::new(ClientCredential::Password("pw".into()));
    let mut server = ScramServer::new(real);
    let first = server.handle_client_first(&client.client_first()).unwrap();
    let last = client.handle_server_first(&first).unwrap();
    server.handle_client_final(&last).unwrap();
    let impostor_signature = hmac(&fake.server_key, &[b"anything"]);
    let msg = format!("v={}", B64.encode(impostor_signature));
    assert_eq!(
        client.handle_server_final(msg.as_bytes()),
        Err(ScramError::InvalidServerSignature)
    );
}

#[test]
fn postgres_protocol_client_against_server() {
    let secret = secret_from_password("s3cret", ITER);
    for channel_binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
        let mut client = ScramSha256::new(b"s3cret", channel_binding);
        let mut server = ScramServer::new(secret.clone());
        let first = server.handle_client_first(client.message()).unwrap();
        client.update(&first).unwrap();
        let (last, keys) = server.handle_client_final(client.message()).unwrap();
        client.finish(&last).unwrap();
        assert_eq!(
            keys.client_key,
            derive_keys("s3cret", &secret.salt, ITER).client_key
        );
    }

    let mut client = ScramSha256::new(b"wrong", ChannelBinding::unsupported());
    let mut server = ScramServer::new(secret);
    let first = server.handle_client_first(client.message()).unwrap();
    client.update(&first).unwrap();
    let err = server.handle_client_final(client.message()).unwrap_err();
    assert_eq!(err, ScramError::AuthFailed);
}

#[test]
fn postgres_protocol_client_against_mock_fails() {
    let mut client = ScramSha256::new(b"anything", ChannelBinding::unsupported());
    let mut server = ScramServer::mock("nobody", ITER);
    let first = server.handle_client_first(client.message()).unwrap();
    client.update(&first).unwrap();
    let err = server.handle_client_final(client.message()).unwrap_err();
    assert_eq!(err, ScramError::AuthFailed);
}

#[test]
fn debug_output_hides_secrets() {
    let keys = derive_keys("pw", b"salt", ITER);
    assert_eq!(format!("{keys:?}"), "ScramKeys(..)");
    let cred = ClientCredential::Password("pw".into());
    assert_eq!(format!("{cred:?}"), "Password(..)");
    let server = ScramServer::new(secret_from_password("pw", ITER));
    assert_eq!(format!("{server:?}"), "ScramServer(..)");
}

#[test]
fn error_texts_name_the_limit() {
    let err = ScramError::TooManyIterations(5_000_000);
    assert_eq!(
        err.to_string(),
        "server asked for 5000000 SCRAM iterations, more than the limit of 1000000"
    );
}

#[test]
fn random_input_never_panics() {
    use rand::{Rng, SeedableRng};
    // Bytes that matter to the parsers, so that random messages get past the first checks.
    const ALPHABET: &[u8] = b"nyapmcrsiev=,,,biwsAB+/09\xff ";
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let secret = secret_from_password_salt("pw", b"salt", 1);
    for _ in 0..3000 {
        let len = rng.gen_range(0..40);
        let msg: Vec<u8> = (0..len)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
            .collect();

        let mut server = ScramServer::new(secret.clone());
        let _ = server.handle_client_first(&msg);
        let mut server = ScramServer::new(secret.clone());
        server.handle_client_first(b"n,,n=,r=abc").unwrap();
        let _ = server.handle_client_final(&msg);

        let mut client = ScramClient::new(ClientCredential::Password("pw".into()));
        client.client_first();
        let _ = client.handle_server_first(&msg);
        let mut client = ScramClient::new(ClientCredential::Keys(derive_keys("pw", b"s", 1)));
        let first = client.client_first();
        let nonce = &first[b"n,,n=,r=".len()..];
        let server_first = [b"r=", nonce, b"x,s=c2FsdA==,i=1"].concat();
        client.handle_server_first(&server_first).unwrap();
        let _ = client.handle_server_final(&msg);
    }
}
