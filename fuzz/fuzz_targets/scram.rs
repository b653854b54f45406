//! SCRAM-SHA-256 messages from the other side, in both roles, on arbitrary bytes.
//!
//! Input: one role byte, then the first message, `\n`, the second. Role bit 0: 0 = server
//! role (`ScramServer`, the input is a client's client-first and client-final), 1 = client
//! role (`ScramClient` with pass-through keys, so no PBKDF2 per run; the input is a
//! server's server-first and server-final). Role bit 1 in the server role: a mock exchange
//! (unknown user). The secret is RFC 7677's (`pencil`, 4096 iterations).
//!
//! Nonces are random, so the harness fills in placeholders the seeds use: `@N` becomes the
//! combined nonce (server role) or the client nonce (client role); a client-final ending
//! in `,p=@P` gets the correct proof and a server-final `@V` the correct signature. That
//! lets the fuzzer reach the success paths.
//!
//! Invariants: no panic; no success without the proof or signature the harness computed;
//! a mock exchange never succeeds; a successful server exchange returns the client's
//! real ClientKey and the right server signature; any error ends the exchange (the next
//! call is out of order).

#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use pgsluice::auth::scram::{
    derive_keys, secret_from_password_salt, ClientCredential, ScramClient, ScramError, ScramKeys,
    ScramServer,
};
use pgsluice::config::ScramSecret;
use sha2::{Digest, Sha256};

const PASSWORD: &str = "pencil";
const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const ITERATIONS: u32 = 4096;

fn fixture() -> &'static (ScramSecret, ScramKeys) {
    static F: OnceLock<(ScramSecret, ScramKeys)> = OnceLock::new();
    F.get_or_init(|| {
        let salt = B64.decode(SALT_B64).unwrap();
        (
            secret_from_password_salt(PASSWORD, &salt, ITERATIONS),
            derive_keys(PASSWORD, &salt, ITERATIONS),
        )
    })
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn replace(hay: &[u8], pat: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(pat) {
            out.extend_from_slice(with);
            i += pat.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

fn server_role(msg1: &[u8], msg2: Option<&[u8]>, mock: bool) {
    let (secret, keys) = fixture();
    let mut srv = if mock {
        ScramServer::mock("user", ITERATIONS)
    } else {
        ScramServer::new(secret.clone())
    };
    let server_first = match srv.handle_client_first(msg1) {
        Ok(sf) => sf,
        Err(_) => {
            let again = srv.handle_client_final(msg2.unwrap_or(b""));
            assert!(matches!(again, Err(ScramError::OutOfOrder)), "{again:?}");
            return;
        }
    };
    // r=<client nonce><server nonce>,s=<salt>,i=<iterations>
    let sf = std::str::from_utf8(&server_first).expect("server-first is text");
    let (nonce, rest) = sf
        .strip_prefix("r=")
        .and_then(|s| s.split_once(",s="))
        .unwrap_or_else(|| panic!("server-first {sf:?}"));
    assert!(nonce
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b','));
    let (_salt, iters) = rest.split_once(",i=").expect("i= in server-first");
    assert_eq!(iters, ITERATIONS.to_string());
    // Accepted: the GS2 header was `n,,` or `y,,`.
    let bare = &msg1[3..];

    let Some(msg2) = msg2 else { return };
    let mut fin = replace(msg2, b"@N", nonce.as_bytes());
    let mut with_proof = false;
    if fin.ends_with(b",p=@P") {
        let without_proof = &fin[..fin.len() - 5];
        let auth: [&[u8]; 5] = [bare, b",", &server_first, b",", without_proof];
        let stored = Sha256::digest(keys.client_key);
        let sig = hmac(&stored, &auth);
        let proof: Vec<u8> = keys
            .client_key
            .iter()
            .zip(sig)
            .map(|(a, b)| a ^ b)
            .collect();
        fin.truncate(fin.len() - 2);
        fin.extend_from_slice(B64.encode(proof).as_bytes());
        with_proof = true;
    }
    if let Ok((server_final, got)) = srv.handle_client_final(&fin) {
        assert!(!mock, "a mock exchange succeeded");
        assert!(with_proof, "success without the right proof: {fin:?}");
        let without_proof = &fin[..fin.iter().rposition(|&b| b == b',').unwrap()];
        let auth: [&[u8]; 5] = [bare, b",", &server_first, b",", without_proof];
        let expect = format!("v={}", B64.encode(hmac(&keys.server_key, &auth)));
        assert_eq!(server_final, expect.as_bytes());
        assert_eq!(got.client_key, keys.client_key);
        assert_eq!(got.server_key, keys.server_key);
    }
    let again = srv.handle_client_final(&fin);
    assert!(matches!(again, Err(ScramError::OutOfOrder)), "{again:?}");
}

fn client_role(msg1: &[u8], msg2: Option<&[u8]>) {
    let (_, keys) = fixture();
    let mut cl = ScramClient::new(ClientCredential::Keys(keys.clone()));
    let first = cl.client_first();
    let client_nonce = first
        .strip_prefix(b"n,,n=,r=")
        .unwrap_or_else(|| panic!("client-first {first:?}"))
        .to_vec();
    let server_first = replace(msg1, b"@N", &client_nonce);
    let client_final = match cl.handle_server_first(&server_first) {
        Ok(cf) => cf,
        Err(_) => {
            let again = cl.handle_server_final(msg2.unwrap_or(b""));
            assert!(matches!(again, Err(ScramError::OutOfOrder)), "{again:?}");
            return;
        }
    };
    assert!(client_final.starts_with(b"c=biws,r="), "{client_final:?}");
    let p = client_final
        .windows(3)
        .rposition(|w| w == b",p=")
        .expect("proof in client-final");
    let without_proof = &client_final[..p];

    let Some(msg2) = msg2 else { return };
    let auth: [&[u8]; 5] = [&first[3..], b",", &server_first, b",", without_proof];
    let sig = B64.encode(hmac(&keys.server_key, &auth));
    let server_final = replace(msg2, b"@V", sig.as_bytes());
    let result = cl.handle_server_final(&server_final);
    if result.is_ok() {
        assert!(
            msg2.windows(2).any(|w| w == b"@V"),
            "server signature forged: {msg2:?}"
        );
    }
    if msg2 == b"v=@V" {
        assert_eq!(result, Ok(()), "the right signature is refused");
    }
    let again = cl.handle_server_final(&server_final);
    assert!(matches!(again, Err(ScramError::OutOfOrder)), "{again:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&role, rest)) = data.split_first() else {
        return;
    };
    let (msg1, msg2) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if role & 1 == 0 {
        server_role(msg1, msg2, role & 2 != 0);
    } else {
        client_role(msg1, msg2);
    }
});
