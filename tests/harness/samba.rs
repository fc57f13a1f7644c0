//! A throwaway Samba Active Directory domain controller: `samba-tool domain provision` into a
//! temp dir (realm EXAMPLE.COM, base `DC=example,DC=com`, no DNS backend, a host name of its
//! own), then `samba -i -M single` with a minimal `smb.conf` of this harness (only the `ldap`
//! service; LDAPS with a certificate from a test CA of this harness for the server's address)
//! under the watchdog of `server.rs`.
//!
//! Samba's LDAP ports are fixed (389, 636), so each server gets a loopback address of its own:
//! slot `n` of `/tmp/scim-sync-samba-<n>.lock` (an exclusive file lock held for the life of the
//! test process, released by the kernel however it ends) owns `127.83.89.<10+n>`, added to `lo`
//! when missing (`ip addr add`; the harness runs as root, as Samba must). The root DSE's
//! `dnsHostName` must be this server's host name before a test sees it.
//!
//! Plain simple binds are allowed (`ldap server require strong auth = no`) for the harness's own
//! admin connection; the tests' targets use LDAPS, and Samba takes `unicodePwd` only over it.
//!
//! Started once per test binary ([`shared`]): tests work below an OU of their own.

use super::server::{need, run, Endpoint, Watched};
use std::fs::File;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

const SAMBA: &str = "/usr/sbin/samba";
const SAMBA_TOOL: &str = "/usr/bin/samba-tool";
/// Base DN.
pub const BASE: &str = "DC=example,DC=com";
/// The domain's Administrator.
pub const ADMIN: &str = "CN=Administrator,CN=Users,DC=example,DC=com";
const PASSWORD: &str = "Harness-secret1";

/// The running DC.
pub struct Samba {
    /// How to reach it.
    pub endpoint: Endpoint,
    _slot: File,
    _server: Mutex<Watched>,
}

static SHARED: OnceLock<Samba> = OnceLock::new();

/// The one Samba AD DC of this test binary, started on first use.
pub fn shared() -> &'static Samba {
    SHARED.get_or_init(start)
}

/// A free slot: its lock file, held, and its address.
fn slot() -> (File, String) {
    for n in 0..64u32 {
        let path = format!("/tmp/scim-sync-samba-{n}.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        if file.try_lock().is_ok() {
            return (file, format!("127.83.89.{}", 10 + n));
        }
    }
    panic!("all 64 Samba harness slots are taken");
}

fn ensure_address(addr: &str) {
    let shown = run("ip", &["-o", "addr", "show", "dev", "lo"]);
    if shown.contains(&format!("inet {addr}/")) {
        return;
    }
    run("ip", &["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
}

fn smb_conf(dir: &Path, addr: &str, host: &str) -> String {
    let d = |sub: &str| dir.join(sub).display().to_string();
    format!(
        "[global]
	netbios name = {host}
	realm = EXAMPLE.COM
	workgroup = EXAMPLE
	server role = active directory domain controller
	interfaces = {addr}
	bind interfaces only = yes
	server services = ldap
	private dir = {private}
	state directory = {state}
	cache directory = {cache}
	lock directory = {lock}
	pid directory = {lock}
	binddns dir = {binddns}
	log file = {log}
	ldap server require strong auth = no
	tls enabled = yes
	tls keyfile = {key}
	tls certfile = {cert}
	tls cafile = {ca}
",
        private = d("private"),
        state = d("state"),
        cache = d("cache"),
        lock = d("lock"),
        binddns = d("bind-dns"),
        log = d("samba.log"),
        key = d("tls/server.key"),
        cert = d("tls/server.pem"),
        ca = d("tls/ca.pem"),
    )
}

fn start() -> Samba {
    need(SAMBA, "samba");
    need(SAMBA_TOOL, "samba");
    need("/usr/share/samba/setup", "samba-ad-provision");
    let (slot_file, addr) = slot();
    ensure_address(&addr);
    let dir = tempfile::Builder::new()
        .prefix("scim-samba-")
        .tempdir()
        .unwrap()
        .keep();
    let host = format!("dc{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let target = dir.display().to_string();
    run(
        SAMBA_TOOL,
        &[
            "domain",
            "provision",
            "--realm=EXAMPLE.COM",
            "--domain=EXAMPLE",
            "--server-role=dc",
            "--dns-backend=NONE",
            &format!("--adminpass={PASSWORD}"),
            &format!("--targetdir={target}"),
            &format!("--host-name={host}"),
            &format!("--option=interfaces={addr}"),
            "--option=bind interfaces only=yes",
        ],
    );
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    super::slapd::make_test_pki_for(&tls, &addr);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        tls.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    for sub in ["cache", "lock"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let conf = dir.join("etc/harness.conf");
    std::fs::write(&conf, smb_conf(&dir, &addr, &host)).unwrap();
    let log = dir.join("server.log");
    let server = Watched::spawn(
        &dir,
        &log,
        SAMBA,
        &[
            "-i",
            "-M",
            "single",
            "--debuglevel=0",
            "-s",
            conf.to_str().unwrap(),
        ],
    );
    let endpoint = Endpoint {
        uri: format!("ldap://{addr}"),
        ldaps_uri: Some(format!("ldaps://{addr}")),
        ca_file: Some(tls.join("ca.pem")),
        bind_dn: ADMIN.to_owned(),
        password: PASSWORD.to_owned(),
        base: BASE.to_owned(),
    };
    // Bounded readiness wait: LDAPS is the last listener Samba's ldap service opens.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut up = false;
    while std::time::Instant::now() < deadline && !server.ended() {
        if std::net::TcpStream::connect((addr.as_str(), 636)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if !up {
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("samba did not listen on {addr}:636:\n{out}");
    }
    // The server answering is ours, not another run's on a stale address.
    let dse = run(
        "ldapsearch",
        &[
            "-x",
            "-LLL",
            "-H",
            &endpoint.uri,
            "-s",
            "base",
            "-b",
            "",
            "dnsHostName",
        ],
    );
    assert!(
        dse.to_lowercase()
            .contains(&format!("dnshostname: {host}.")),
        "the server at {addr} is not ours: {dse}"
    );
    Samba {
        endpoint,
        _slot: slot_file,
        _server: Mutex::new(server),
    }
}
