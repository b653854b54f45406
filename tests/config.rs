//! The example configs in `conf/` load, say the same thing in both syntaxes, and carry
//! secrets that really belong to the passwords their comments name; errors point at the
//! offending key and line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use pgsluice::config::{AuthType, Config, ConfigError, PoolMode, Secret, UserList};
use sha2::Sha256;

fn conf(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf")
        .join(name)
}

#[test]
fn ini_and_toml_examples_are_the_same_config() {
    let mut ini = Config::load(&conf("pgsluice.ini")).unwrap();
    let mut toml = Config::load(&conf("pgsluice.toml")).unwrap();
    assert_eq!(
        ini.conffile.as_deref(),
        Some(conf("pgsluice.ini").as_path())
    );
    assert!(ini.warnings.is_empty(), "{:?}", ini.warnings);
    assert!(toml.warnings.is_empty(), "{:?}", toml.warnings);
    for cfg in [&mut ini, &mut toml] {
        cfg.conffile = None;
        cfg.warnings.clear();
    }
    assert_eq!(ini, toml);

    let g = &ini.general;
    assert_eq!(g.listen_addr, ["127.0.0.1"]);
    assert_eq!(g.listen_port, 6432);
    assert_eq!(g.auth_type, AuthType::Md5);
    assert_eq!(g.auth_file.as_deref(), Some(Path::new("conf/userlist.txt")));
    assert_eq!(g.pool_mode, PoolMode::Transaction);
    assert_eq!(g.default_pool_size, 20);
    assert_eq!(g.admin_users, ["postgres"]);
    assert_eq!(g.query_wait_timeout, Duration::from_secs(120));
    let app = ini.database("appdb").unwrap();
    assert_eq!(
        (app.host.as_deref(), app.port, app.dbname.as_deref()),
        (Some("127.0.0.1"), 5432, Some("postgres"))
    );
    let other = ini.database("anything").unwrap();
    assert_eq!((other.name.as_str(), other.dbname), ("anything", None));
}

fn write_temp(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn unknown_key_error_names_key_and_line() {
    for (name, text) in [
        (
            "bad.ini",
            "[pgbouncer]\nlisten_port = 6432\n\nlisten_prot = 6433\n",
        ),
        (
            "bad.toml",
            "[pgbouncer]\nlisten_port = 6432\n\nlisten_prot = 6433\n",
        ),
    ] {
        let (_dir, path) = write_temp(name, text);
        let err = Config::load(&path).unwrap_err();
        match &err {
            ConfigError::At { line, msg, .. } => {
                assert_eq!(*line, 4, "{name}");
                assert_eq!(msg, "unknown parameter: pgbouncer/listen_prot");
            }
            other => panic!("{name}: {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(":4: "), "{text}");
        assert!(text.contains("listen_prot"), "{text}");
    }
}

#[test]
fn load_validates() {
    let (_dir, path) = write_temp("v.ini", "[pgbouncer]\nunix_socket_dir =\n");
    assert!(matches!(Config::load(&path), Err(ConfigError::Msg(_))));
}

fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let prf = |data: &[&[u8]]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(password).unwrap();
        for d in data {
            mac.update(d);
        }
        <[u8; 32]>::from(mac.finalize().into_bytes())
    };
    let mut u = prf(&[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = prf(&[&u]);
        out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
    }
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[test]
fn example_userlist_secrets_match_their_passwords() {
    let list = UserList::load(&conf("userlist.txt")).unwrap();
    assert_eq!(list.users.len(), 3);
    assert_eq!(list.users["postgres"], Secret::Plain("postgres".into()));

    let Secret::Md5(md5) = &list.users["app"] else {
        panic!("app is not md5");
    };
    let digest = Md5::digest(b"app_passwordapp");
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(md5, &format!("md5{hex}"));

    let Secret::Scram(scram) = &list.users["scram_user"] else {
        panic!("scram_user is not SCRAM");
    };
    let salted = pbkdf2_sha256(b"scram_password", &scram.salt, scram.iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    assert_eq!(stored_key, scram.stored_key);
    assert_eq!(hmac_sha256(&salted, b"Server Key"), scram.server_key);
}
