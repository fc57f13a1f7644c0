//! A throwaway OpenLDAP server: cn=config built with `slapadd -n0` from LDIF in a temp dir
//! (modules back_mdb, ppolicy and refint, whose overlay on `member` only `start_with_refint`
//! configures; schemas core, cosine, inetorgperson, nis; an mdb database for
//! dc=example,dc=com; a default password policy with `pwdLockout: TRUE`, without which
//! OpenLDAP 2.5 ignores `pwdAccountLockedTime`), seeded with ou=People, ou=Groups and
//! ou=Disabled, served on a free loopback port. `stop()`/`start_again()` keep port and data
//! (outage tests). Killed on `Drop`. Fails loudly when slapd is not installed.

use ldap3::{Ldap, LdapConnAsync, Scope, SearchEntry};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
const BASE: &str = "dc=example,dc=com";
const ADMIN: &str = "cn=admin,dc=example,dc=com";
const PASSWORD: &str = "harness-secret";

/// An entry's attributes: (lower-cased name, sorted values), sorted by name.
pub type Attrs = Vec<(String, Vec<String>)>;

/// A running (or stopped) slapd.
pub struct Slapd {
    dir: tempfile::TempDir,
    port: u16,
    /// The ldaps:// port when started with TLS.
    tls_port: Option<u16>,
    child: Option<Child>,
}

fn find(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} not found: the LDAP tests need OpenLDAP: `apt-get install slapd ldap-utils`"
    );
    p
}

fn config_ldif(dir: &Path, tls: bool, refint: bool) -> String {
    let data = dir.join("data");
    let tls = if tls {
        format!(
            "olcTLSCACertificateFile: {d}/ca.pem\nolcTLSCertificateFile: {d}/server.pem\n\
             olcTLSCertificateKeyFile: {d}/server.key\n",
            d = dir.display()
        )
    } else {
        String::new()
    };
    format!(
        "dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {pid}
{tls}
dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
olcModuleLoad: ppolicy
olcModuleLoad: pw-sha2
olcModuleLoad: refint

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif

include: file:///etc/ldap/schema/cosine.ldif

include: file:///etc/ldap/schema/inetorgperson.ldif

include: file:///etc/ldap/schema/nis.ldif

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {BASE}
olcRootDN: {ADMIN}
olcRootPW: {PASSWORD}
olcDbDirectory: {data}
olcDbMaxSize: 1073741824
olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {{1}}to * by * read

dn: olcOverlay={{0}}ppolicy,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcPPolicyConfig
olcOverlay: {{0}}ppolicy
olcPPolicyDefault: cn=default,ou=Policies,{BASE}
{refint}",
        pid = dir.join("slapd.pid").display(),
        refint = if refint {
            format!(
                "
dn: olcOverlay={{1}}refint,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcRefintConfig
olcOverlay: {{1}}refint
olcRefintAttribute: member
olcRefintNothing: cn=nobody,{BASE}
"
            )
        } else {
            String::new()
        },
        data = data.display(),
    )
}

fn data_ldif() -> String {
    let mut out = format!(
        "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n"
    );
    for ou in ["Policies", "People", "Groups", "Disabled"] {
        out.push_str(&format!(
            "dn: ou={ou},{BASE}\nobjectClass: organizationalUnit\nou: {ou}\n\n"
        ));
    }
    out.push_str(&format!(
        "dn: cn=default,ou=Policies,{BASE}\nobjectClass: organizationalRole\n\
         objectClass: pwdPolicy\ncn: default\npwdAttribute: userPassword\npwdLockout: TRUE\n\n"
    ));
    out
}

fn run(cmd: &Path, args: &[&str]) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cmd.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        cmd.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the TLS tests need the openssl command: `apt-get install openssl`");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_ca(dir: &Path, name: &str) {
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    let subj = format!("/CN=scim-sync test {name}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A test PKI in `dir`: `ca.pem` (a CA) and `server.pem` / `server.key` for 127.0.0.1 signed by
/// it. Also used by the HTTPS listener tests.
pub fn make_test_pki(dir: &Path) {
    make_test_pki_for(dir, "127.0.0.1");
}

/// Like [`make_test_pki`], the server certificate for `ip` (the Samba harness's own loopback
/// address).
pub fn make_test_pki_for(dir: &Path, ip: &str) {
    make_ca(dir, "ca");
    make_server_cert(dir, ip);
}

fn make_server_cert(dir: &Path, ip: &str) {
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "subjectAltName=IP:{ip},DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl Slapd {
    /// Build a fresh directory and start slapd on a free loopback port.
    pub async fn start() -> Slapd {
        Slapd::build(false, false).await
    }

    /// Like [`Slapd::start`], with the `refint` overlay on `member` (a deleted or renamed entry
    /// is dropped from or renamed in the groups naming it by slapd itself).
    pub async fn start_with_refint() -> Slapd {
        Slapd::build(false, true).await
    }

    /// Like [`Slapd::start`], with TLS: a fresh CA (`ca_file()`) and a server certificate for
    /// 127.0.0.1; StartTLS on `uri()` and TLS on `ldaps_uri()`.
    pub async fn start_tls() -> Slapd {
        Slapd::build(true, false).await
    }

    async fn build(tls: bool, refint: bool) -> Slapd {
        let slapadd = find(SLAPADD);
        find(SLAPD);
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("slapd.d");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let config = dir.path().join("config.ldif");
        if tls {
            make_ca(dir.path(), "ca");
            make_server_cert(dir.path(), "127.0.0.1");
        }
        std::fs::write(&config, config_ldif(dir.path(), tls, refint)).unwrap();
        let data = dir.path().join("data.ldif");
        std::fs::write(&data, data_ldif()).unwrap();
        let confs = conf.to_str().unwrap();
        run(
            &slapadd,
            &["-n0", "-F", confs, "-l", config.to_str().unwrap()],
        );
        run(
            &slapadd,
            &["-F", confs, "-b", BASE, "-l", data.to_str().unwrap()],
        );
        let mut s = Slapd {
            dir,
            port: free_port(),
            tls_port: tls.then(free_port),
            child: None,
        };
        // Another process may take the free port between the probe and slapd's bind: retry
        // on fresh ports.
        let mut last = String::new();
        for _ in 0..5 {
            match s.try_start().await {
                Ok(()) => return s,
                Err(log) => last = log,
            }
            s.port = free_port();
            s.tls_port = tls.then(free_port);
        }
        panic!("slapd did not start:\n{last}");
    }

    /// Start slapd again on the same port and data (after [`Slapd::stop`]).
    pub async fn start_again(&mut self) {
        if let Err(log) = self.try_start().await {
            panic!("slapd did not start:\n{log}");
        }
    }

    /// Start slapd; on failure, its log.
    async fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "slapd is already running");
        let conf = self.dir.path().join("slapd.d");
        let mut url = format!("ldap://127.0.0.1:{}/", self.port);
        if let Some(p) = self.tls_port {
            url.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
        }
        let mut child = Command::new(SLAPD)
            .args(["-h", &url, "-F", conf.to_str().unwrap(), "-d", "16384"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn slapd");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut log = Vec::new();
        // slapd prints "slapd starting" at any non-zero debug level (16384 = sync: silent
        // here); it exits with a message when it cannot listen.
        let ready = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap_or(None) {
                let done = line.contains("slapd starting");
                log.push(line);
                if done {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !ready {
            let _ = child.kill().await;
            return Err(log.join("\n"));
        }
        drain(lines);
        self.child = Some(child);
        // "starting" is logged just before listen(): poll until a bind succeeds (a bounded
        // readiness wait, not a timing assumption).
        for _ in 0..500 {
            if self.can_bind(ADMIN, PASSWORD).await {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.stop().await;
        Err(format!("slapd on port {} does not accept binds", self.port))
    }

    /// Stop slapd (SIGKILL, as a crash or outage would); data and port are kept.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill slapd");
        }
    }

    /// Freeze slapd (SIGSTOP): connections are accepted by the kernel but never answered,
    /// like a hung server. [`Slapd::resume`] undoes it.
    pub fn pause(&self) {
        self.signal("-STOP");
        // kill(2) returns once the signal is queued; every thread of slapd stops only when it
        // next leaves the kernel. Wait until /proc shows the process stopped, so nothing sent
        // after `pause` returns can be answered before `resume`.
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("slapd is not running");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if state == Some('T') {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "slapd {pid} did not stop: {stat}"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Resume a paused slapd (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("slapd is not running");
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// `ldap://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:PORT` (only after [`Slapd::start_tls`]).
    pub fn ldaps_uri(&self) -> String {
        format!(
            "ldaps://127.0.0.1:{}",
            self.tls_port.expect("started without TLS")
        )
    }

    /// The CA certificate (PEM) that signed the server certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA that did not sign the server certificate (for negative tests).
    pub fn other_ca_file(&self) -> PathBuf {
        make_ca(self.dir.path(), "other-ca");
        self.dir.path().join("other-ca.pem")
    }

    /// The root DN.
    pub fn bind_dn(&self) -> &'static str {
        ADMIN
    }

    /// The root DN's password.
    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// The suffix, `dc=example,dc=com`.
    pub fn base(&self) -> &'static str {
        BASE
    }

    /// A connection bound as the root DN.
    pub async fn admin(&self) -> Ldap {
        let (conn, mut ldap) = LdapConnAsync::new(&self.uri()).await.expect("connect");
        spawn_conn(conn);
        ldap.simple_bind(ADMIN, PASSWORD)
            .await
            .unwrap()
            .success()
            .unwrap();
        ldap
    }

    /// Whether a simple bind with these credentials succeeds.
    pub async fn can_bind(&self, dn: &str, password: &str) -> bool {
        let Ok((conn, mut ldap)) = LdapConnAsync::new(&self.uri()).await else {
            return false;
        };
        spawn_conn(conn);
        let ok = ldap
            .simple_bind(dn, password)
            .await
            .map(|r| r.rc == 0)
            .unwrap_or(false);
        let _ = ldap.unbind().await;
        ok
    }

    /// One entry's attributes (lower-cased names, sorted values; `attrs` as for a search,
    /// e.g. `["*", "pwdAccountLockedTime"]`), or `None`.
    pub async fn entry(&self, dn: &str, attrs: &[&str]) -> Option<Attrs> {
        let mut ldap = self.admin().await;
        let res = ldap
            .search(dn, Scope::Base, "(objectClass=*)", attrs.to_vec())
            .await
            .unwrap();
        if res.1.rc == 32 {
            return None;
        }
        let (entries, _) = res.success().unwrap();
        entries
            .into_iter()
            .next()
            .map(|e| normalise(SearchEntry::construct(e)).1)
    }

    /// Every entry below `base` as sorted, normalised LDIF (DNs sorted, attribute names
    /// lower-cased and sorted, values sorted); operational attributes left out.
    pub async fn dump(&self, base: &str) -> String {
        let mut ldap = self.admin().await;
        let (entries, _) = ldap
            .search(base, Scope::Subtree, "(objectClass=*)", vec!["*"])
            .await
            .unwrap()
            .success()
            .unwrap();
        let mut all: Vec<(String, Attrs)> = entries
            .into_iter()
            .map(|e| normalise(SearchEntry::construct(e)))
            .collect();
        all.sort();
        let mut out = String::new();
        for (dn, attrs) in all {
            out.push_str(&format!("dn: {dn}\n"));
            for (a, vs) in attrs {
                for v in vs {
                    out.push_str(&format!("{a}: {v}\n"));
                }
            }
            out.push('\n');
        }
        out
    }
}

pub(crate) fn normalise(e: SearchEntry) -> (String, Attrs) {
    let mut attrs: Attrs = e
        .attrs
        .into_iter()
        .map(|(k, mut v)| {
            v.sort();
            (k.to_ascii_lowercase(), v)
        })
        .collect();
    attrs.sort();
    (e.dn, attrs)
}

/// Test-only background tasks (the daemon's TaskTracker is not involved here).
#[allow(clippy::disallowed_methods)]
pub(crate) fn spawn_conn(conn: LdapConnAsync) {
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
}

#[allow(clippy::disallowed_methods)]
fn drain(mut lines: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>) {
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
