//! What the shared directory servers (`ds389.rs`, `samba.rs`) have in common: a server process
//! started once per test binary that goes away with it, and an admin connection.
//!
//! A server shared by every test of the binary lives in a `static`, which is never dropped; so
//! it runs under a small `sh` watchdog whose stdin is a pipe only this process holds. When the
//! test binary exits, however it exits (end of run, panic, SIGKILL), the pipe closes, `read`
//! returns, and the watchdog stops the server and removes its directory. The watchdog runs in
//! its own process group, so a Ctrl-C to the test run reaches it only through that pipe.

use super::slapd::{normalise, spawn_conn, Attrs};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;

/// A server process under the watchdog. Dropping it (never, for a `static`) or ending the test
/// process stops the server and removes `dir`.
pub struct Watched {
    /// Held open: its closing is the watchdog's signal.
    _stdin: ChildStdin,
    _child: Child,
    /// The server's own pid (the watchdog prints it).
    pid: u32,
}

impl Watched {
    /// Start `program args` with stdout and stderr appended to `log`; the server's own stdin
    /// is the watchdog's pipe too (`samba -i` ends on its EOF by itself).
    pub fn spawn(dir: &Path, log: &Path, program: &str, args: &[&str]) -> Watched {
        // $1 = directory to remove, $2 = log, then the command. `kill` then `wait`: the
        // server's own shutdown is done before its files go.
        let script = r#"d=$1; log=$2; shift 2
exec 3<&0
"$@" <&3 3<&- >>"$log" 2>&1 &
p=$!
echo "$p"
while read -r _; do :; done
kill "$p" 2>/dev/null
wait "$p" 2>/dev/null
rm -rf "$d""#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(dir)
            .arg(log)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stdin = child.stdin.take().expect("watchdog stdin");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("watchdog stdout")),
            &mut line,
        )
        .expect("the watchdog prints the server's pid");
        let pid = line.trim().parse().expect("a pid");
        Watched {
            _stdin: stdin,
            _child: child,
            pid,
        }
    }

    /// Whether the server already exited (gone, or a zombie its watchdog has not reaped).
    pub fn ended(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        matches!(state, None | Some('Z' | 'X'))
    }
}

/// Connection facts of one running directory server.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// What the tests bind to as the admin (`ldap://`).
    pub uri: String,
    /// `ldaps://` when the server has TLS.
    pub ldaps_uri: Option<String>,
    /// The CA that signed the server certificate.
    pub ca_file: Option<PathBuf>,
    /// Admin bind DN.
    pub bind_dn: String,
    /// Its password.
    pub password: String,
    /// Naming context.
    pub base: String,
}

impl Endpoint {
    /// A connection bound as the admin; over `ldaps_uri` when `tls`.
    pub async fn admin(&self) -> Ldap {
        let (conn, mut ldap) = LdapConnAsync::with_settings(LdapConnSettings::new(), &self.uri)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.uri));
        spawn_conn(conn);
        ldap.simple_bind(&self.bind_dn, &self.password)
            .await
            .unwrap()
            .success()
            .unwrap_or_else(|e| panic!("bind {} at {}: {e}", self.bind_dn, self.uri));
        ldap
    }

    /// A connection over LDAPS trusting `ca_file`, bound as `dn`; the bind's result code.
    pub async fn ldaps_bind(&self, dn: &str, password: &str) -> u32 {
        let uri = self.ldaps_uri.as_deref().expect("no LDAPS");
        let ca = self.ca_file.as_deref().expect("no CA");
        let settings = LdapConnSettings::new().set_config(Arc::new(client_config(ca)));
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, uri)
            .await
            .unwrap_or_else(|e| panic!("connect {uri}: {e}"));
        spawn_conn(conn);
        let rc = ldap.simple_bind(dn, password).await.unwrap().rc;
        let _ = ldap.unbind().await;
        rc
    }

    /// Whether a plain simple bind with these credentials succeeds.
    pub async fn can_bind(&self, dn: &str, password: &str) -> bool {
        let Ok((conn, mut ldap)) = LdapConnAsync::new(&self.uri).await else {
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

    /// One entry's attributes (lower-cased names, sorted values), or `None`.
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
        let _ = ldap.unbind().await;
        entries
            .into_iter()
            .next()
            .map(|e| normalise(SearchEntry::construct(e)).1)
    }
}

/// A rustls client config trusting only the PEM CA at `ca`.
pub fn client_config(ca: &Path) -> rustls::ClientConfig {
    let pem = std::fs::read(ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Run a setup command; panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails loudly (with the install hint) when `path` is missing.
pub fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} not found: these tests need {package}: run scripts/install-deps as root \
         (or `apt-get install {package}`)"
    );
}
