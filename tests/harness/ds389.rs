//! A throwaway 389 Directory Server, laid out by this harness alone (no `dscreate`: on Debian
//! 12 it calls `systemctl` after the layout and stops there on machines without systemd).
//!
//! The instance is what `dscreate` would write, in a temp dir: `dse.ldif` from the package's
//! `template-dse.ldif` with every `%placeholder%` filled in (config, schema, db, log, run and lock
//! dirs in the temp dir; a loopback port; `cn=Directory Manager` with a `pwdhash` SSHA512
//! password; LDAPI off), the MemberOf and referential-integrity plugins switched on (so our writes
//! and theirs are tested together), the schema, collation and certmap files copied in. Then
//! `ns-slapd -D <config> -i <pid>` in the foreground (`-d 0`) under the watchdog of
//! `server.rs`; then over LDAP the `userroot` backend and its mapping tree for
//! `dc=example,dc=com` (in `dse.ldif` before the first start, they stop it), and the suffix
//! with `ou=People`, `ou=Groups`, `ou=Disabled`.
//! No TLS (an NSS database would be needed): the tests use plain LDAP on loopback.
//!
//! Started once per test binary ([`shared`]): tests work below an OU of their own.

use super::server::{need, run, Endpoint, Watched};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

const NS_SLAPD: &str = "/usr/sbin/ns-slapd";
const TEMPLATE: &str = "/usr/share/dirsrv/data/template-dse.ldif";
const BASE: &str = "dc=example,dc=com";
const ROOT_DN: &str = "cn=Directory Manager";
const PASSWORD: &str = "harness-secret";
/// The account ns-slapd drops to (created by the Debian package).
const USER: &str = "dirsrv";

/// The running server.
pub struct Ds389 {
    /// How to reach it.
    pub endpoint: Endpoint,
    _server: Mutex<Watched>,
}

static SHARED: OnceLock<Ds389> = OnceLock::new();

/// The one 389 Directory Server of this test binary, started on first use.
pub fn shared() -> &'static Ds389 {
    SHARED.get_or_init(start)
}

fn uid_gid(user: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&user))
        .map(|f| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        .unwrap_or_else(|| panic!("no user {user}: is 389-ds-base installed?"))
}

fn chown_all(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_all(&e.unwrap().path(), uid, gid);
        }
    }
}

/// `template-dse.ldif` with the placeholders filled in, MemberOf and referint on. (The backend
/// is added over LDAP once the server runs: one in `dse.ldif` before the first start stops it.)
fn dse_ldif(dir: &Path, port: u16, root_pw: &str) -> String {
    let d = |sub: &str| dir.join(sub).display().to_string();
    let template = std::fs::read_to_string(TEMPLATE).unwrap();
    let values = [
        ("schema_dir", d("config/schema")),
        ("bak_dir", d("bak")),
        ("cert_dir", d("certs")),
        ("config_dir", d("config")),
        ("db_dir", d("db")),
        ("db_home_dir", d("db")),
        ("db_lib", "bdb".to_owned()),
        ("ds_passwd", root_pw.to_owned()),
        ("ds_port", port.to_string()),
        ("ds_suffix", BASE.to_owned()),
        ("ds_user", USER.to_owned()),
        ("fqdn", "localhost".to_owned()),
        ("inst_dir", d("")),
        ("ldapi", d("run/ldapi")),
        ("ldapi_autobind", "off".to_owned()),
        ("ldapi_enabled", "off".to_owned()),
        ("ldif_dir", d("ldif")),
        ("lock_dir", d("lock")),
        ("log_dir", d("log")),
        ("rootdn", ROOT_DN.to_owned()),
        ("run_dir", d("run")),
        ("tmp_dir", d("tmp")),
    ];
    let mut text = template;
    for (k, v) in values {
        text = text.replace(&format!("%{k}%"), &v);
    }
    assert!(
        !text.contains("%ds_") && !text.contains("_dir%"),
        "{TEMPLATE} has placeholders this harness does not know"
    );
    let on = [
        "cn=memberof plugin,",
        "cn=referential integrity postoperation,",
    ];
    let blocks: Vec<String> = text
        .split("\n\n")
        .map(|block| {
            let first = block
                .trim_start()
                .lines()
                .next()
                .unwrap_or("")
                .to_lowercase();
            if on.iter().any(|p| first.starts_with(&format!("dn: {p}"))) {
                block
                    .lines()
                    .map(|l| {
                        if l.to_lowercase().starts_with("nsslapd-pluginenabled:") {
                            "nsslapd-pluginEnabled: on".to_owned()
                        } else {
                            l.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                block.to_owned()
            }
        })
        .collect();
    let mut text = blocks.join("\n\n");
    // Loopback only.
    text = text.replacen(
        &format!("nsslapd-port: {port}\n"),
        &format!("nsslapd-port: {port}\nnsslapd-listenhost: 127.0.0.1\n"),
        1,
    );
    text
}

fn layout() -> std::path::PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("scim-ds389-")
        .tempdir()
        .unwrap()
        .keep();
    for sub in [
        "config/schema",
        "bak",
        "certs",
        "db",
        "ldif",
        "lock",
        "log",
        "run",
        "tmp",
    ] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::copy(
        "/etc/dirsrv/schema/99user.ldif",
        dir.join("config/schema/99user.ldif"),
    )
    .unwrap();
    for f in ["slapd-collations.conf", "certmap.conf"] {
        std::fs::copy(
            format!("/etc/dirsrv/config/{f}"),
            dir.join("config").join(f),
        )
        .unwrap();
    }
    dir
}

fn start() -> Ds389 {
    need(NS_SLAPD, "389-ds-base");
    need(TEMPLATE, "389-ds-base");
    let (uid, gid) = uid_gid(USER);
    let root_pw = run("pwdhash", &["-s", "SSHA512", PASSWORD])
        .trim()
        .to_owned();
    let mut last = String::new();
    // Another process may take the probed port before ns-slapd binds it: retry on fresh ports
    // (each attempt in a fresh directory: a failed attempt's watchdog removes its own).
    for _ in 0..5 {
        let dir = layout();
        let log = dir.join("server.log");
        let port = super::slapd::free_port();
        std::fs::write(dir.join("config/dse.ldif"), dse_ldif(&dir, port, &root_pw)).unwrap();
        chown_all(&dir, uid, gid);
        let config = dir.join("config").display().to_string();
        let pid = dir.join("run/slapd.pid").display().to_string();
        let server = Watched::spawn(
            &dir,
            &log,
            NS_SLAPD,
            &["-D", &config, "-i", &pid, "-d", "0"],
        );
        let endpoint = Endpoint {
            uri: format!("ldap://127.0.0.1:{port}"),
            ldaps_uri: None,
            ca_file: None,
            bind_dn: ROOT_DN.to_owned(),
            password: PASSWORD.to_owned(),
            base: BASE.to_owned(),
        };
        // A bounded readiness wait: the port answers once the backends are up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut up = false;
        while std::time::Instant::now() < deadline && !server.ended() {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                up = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if !up {
            last = std::fs::read_to_string(dir.join("log/errors")).unwrap_or_default();
            drop(server);
            continue;
        }
        seed(&endpoint);
        return Ds389 {
            endpoint,
            _server: Mutex::new(server),
        };
    }
    panic!("ns-slapd did not start:\n{last}");
}

/// The `userroot` backend with its mapping tree for `BASE`, the suffix entry and the OUs,
/// added with `ldapadd` (the harness is synchronous here).
fn seed(e: &Endpoint) {
    let mut ldif = format!(
        "dn: cn=userroot,cn=ldbm database,cn=plugins,cn=config
objectClass: top
objectClass: extensibleObject
objectClass: nsBackendInstance
cn: userroot
nsslapd-suffix: {BASE}

dn: cn=\"{BASE}\",cn=mapping tree,cn=config
objectClass: top
objectClass: extensibleObject
objectClass: nsMappingTree
cn: {BASE}
nsslapd-state: backend
nsslapd-backend: userroot

"
    );
    ldif.push_str(&format!(
        "dn: {BASE}\nobjectClass: top\nobjectClass: domain\ndc: example\n\n"
    ));
    for ou in ["People", "Groups", "Disabled"] {
        ldif.push_str(&format!(
            "dn: ou={ou},{BASE}\nobjectClass: top\nobjectClass: organizationalUnit\nou: {ou}\n\n"
        ));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), ldif).unwrap();
    run(
        "ldapadd",
        &[
            "-x",
            "-H",
            &e.uri,
            "-D",
            &e.bind_dn,
            "-w",
            &e.password,
            "-f",
            file.path().to_str().unwrap(),
        ],
    );
}
