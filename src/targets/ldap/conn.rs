//! The connection to one LDAP server: connect (ldap:// + optional StartTLS, or ldaps:// with
//! rustls and an optional CA file), simple bind, per-operation timeouts, and reconnection.
//! One multiplexed connection is kept behind a tokio `Mutex`; when an operation fails with a
//! connection error the connection is dropped and the next operation reconnects. Every LDAP
//! failure leaves this file as a classified [`TargetError`]. Must not decide what to change.
//! The first connect reads the root DSE and settles the flavour (configured or detected,
//! logged); AD's `member` is read ranged and merged (`flavour::merge_ranged`).

use super::codes;
use super::flavour::{self, Flavour};
use super::settings::Settings;
use crate::mapping::Entry;
use crate::targets::{config_error, ErrorClass, TargetError};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Scope, SearchEntry};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;

/// An LDAP target: settings, resolved credentials and the shared connection.
pub struct LdapTarget {
    pub(super) settings: Settings,
    password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    slot: tokio::sync::Mutex<Slot<Ldap>>,
    /// Held while connecting (one connect at a time), never with `slot`: a write whose lease
    /// was just checked takes `slot` for a moment only, so it never waits behind another
    /// task's reconnect (up to `connect_timeout`) and then writes later than its check allowed.
    connecting: tokio::sync::Mutex<()>,
    /// The flavour: configured, or detected from the root DSE at the first connect.
    flavour: std::sync::OnceLock<Flavour>,
    /// Whether the root DSE lists the Post-Read control (RFC 4527): an add then returns the new
    /// entry's stable id in its answer instead of a search after it. Read with the flavour.
    post_read: std::sync::OnceLock<bool>,
    /// Writes sent (see [`super::ops`]).
    ops: Arc<super::ops::OpCounts>,
}

impl std::fmt::Debug for LdapTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapTarget")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl LdapTarget {
    /// Build the target: resolve the bind password (file or environment) and load the CA
    /// file. Does not connect (see `healthcheck`).
    ///
    /// # Errors
    /// An unreadable password or CA file, a missing environment variable (permanent).
    pub fn new(settings: Settings) -> Result<LdapTarget, TargetError> {
        let password = settings
            .bind_password
            .resolve(&settings.name, "bind_password_file")?;
        let tls = match &settings.ca_file {
            None => None,
            Some(path) => Some(Arc::new(load_ca(path).map_err(|e| {
                config_error(format!(
                    "target {}: ca_file {}: {e}",
                    settings.name,
                    path.display()
                ))
            })?)),
        };
        let ops = super::ops::for_url(&settings.url);
        Ok(LdapTarget {
            settings,
            password,
            tls,
            slot: tokio::sync::Mutex::new(Slot::default()),
            connecting: tokio::sync::Mutex::new(()),
            flavour: std::sync::OnceLock::new(),
            post_read: std::sync::OnceLock::new(),
            ops,
        })
    }

    /// The directory's flavour: configured, else detected at the first connect (before any
    /// operation: every one connects first), else OpenLDAP's behaviour.
    #[must_use]
    pub fn flavour(&self) -> Flavour {
        self.settings
            .flavour
            .or_else(|| self.flavour.get().copied())
            .unwrap_or(Flavour::OpenLdap)
    }

    /// Read the root DSE once and log the flavour chosen: the configured one (warning when the
    /// root DSE says otherwise) or the detected one.
    async fn settle_flavour(&self, ldap: &mut Ldap) -> Result<(), TargetError> {
        if self.flavour.get().is_some() {
            return Ok(());
        }
        let what = "read the root DSE";
        let attrs = vec![
            "supportedCapabilities",
            "vendorName",
            "vendorVersion",
            "objectClass",
            "structuralObjectClass",
            "supportedControl",
        ];
        let res = ldap
            .with_timeout(self.settings.timeout)
            .search("", Scope::Base, "(objectClass=*)", attrs)
            .await
            .map_err(|e| codes::from_ldap_error(&e, what))?;
        let mut dse = BTreeMap::new();
        if let Some(raw) = res.0.into_iter().next() {
            for (k, v) in SearchEntry::construct(raw).attrs {
                dse.insert(k.to_ascii_lowercase(), v);
            }
        }
        let (detected, why) = Flavour::detect(&dse);
        let post_read = dse
            .get("supportedcontrol")
            .is_some_and(|v| v.iter().any(|c| c == POST_READ_OID));
        let _ = self.post_read.set(post_read);
        let name = &self.settings.name;
        match self.settings.flavour {
            Some(f) if f != detected => tracing::warn!(
                target_name = %name,
                flavour = f.name(),
                detected = detected.name(),
                reason = %why,
                "LDAP flavour configured differs from what the root DSE suggests; using the configured one."
            ),
            Some(f) => {
                tracing::info!(target_name = %name, flavour = f.name(), "LDAP flavour configured.")
            }
            None => tracing::info!(
                target_name = %name,
                flavour = detected.name(),
                reason = %why,
                "LDAP flavour detected from the root DSE (set flavour to choose)."
            ),
        }
        let _ = self.flavour.set(self.settings.flavour.unwrap_or(detected));
        Ok(())
    }

    /// The validated settings.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn connect(&self) -> Result<Ldap, TargetError> {
        let s = &self.settings;
        let mut cs = LdapConnSettings::new()
            .set_conn_timeout(s.connect_timeout)
            .set_starttls(s.starttls);
        if let Some(cfg) = &self.tls {
            cs = cs.set_config(Arc::clone(cfg));
        }
        let what = format!("connect {}", s.url);
        let (conn, mut ldap) = LdapConnAsync::with_settings(cs, &s.url)
            .await
            .map_err(|e| codes::from_ldap_error(&e, &what))?;
        spawn_driver(conn);
        if let Some(dn) = &s.bind_dn {
            let pw = self.password.as_deref().unwrap_or_default();
            let what = format!("bind as {dn}");
            let res = ldap
                .with_timeout(s.timeout)
                .simple_bind(dn, pw)
                .await
                .map_err(|e| codes::from_ldap_error(&e, &what))?;
            if res.rc != 0 {
                return Err(codes::from_result(res.rc, &res.text, &what));
            }
        }
        self.settle_flavour(&mut ldap).await?;
        Ok(ldap)
    }

    /// The connection in the slot while it is open, with its generation (the slot is held
    /// for a moment only).
    async fn open_connection(&self) -> Option<(u64, Ldap)> {
        let mut slot = self.slot.lock().await;
        let (generation, ldap) = slot.get_mut()?;
        if ldap.is_closed() {
            return None;
        }
        Some((generation, ldap.clone()))
    }

    /// A handle on the live connection, connecting (and binding) first if needed: one
    /// connect at a time (`connecting`), the others wait for it and use its connection. A
    /// reconnected connection is live again for every task ([`LdapTarget::live`]).
    /// Returns the connection's generation with it, for [`LdapTarget::drop_connection`].
    async fn handle(&self) -> Result<(u64, Ldap), TargetError> {
        if let Some(live) = self.open_connection().await {
            return Ok(live);
        }
        let _one = self.connecting.lock().await;
        if let Some(live) = self.open_connection().await {
            return Ok(live);
        }
        let ldap = self.connect().await?;
        let generation = self.slot.lock().await.set(ldap.clone());
        Ok((generation, ldap))
    }

    /// Make sure a connection is up (connecting and binding first if needed). A write's
    /// lease check comes after this, so a reconnect's time is not spent after the check.
    pub(super) async fn connected(&self) -> Result<(), TargetError> {
        self.handle().await.map(|_| ())
    }

    /// The live connection, never a new one and never after waiting for a connect: a write
    /// goes out on the connection that was up when its lease was checked
    /// ([`LdapTarget::connected`]; or one another task opened since, without delay), or not
    /// at all. After a reconnect the new connection is the live one; the lease is checked
    /// again before every write (`Exec::fence`), after its connect.
    async fn live(&self) -> Result<(u64, Ldap), TargetError> {
        if let Some(live) = self.open_connection().await {
            return Ok(live);
        }
        Err(TargetError {
            class: ErrorClass::Transient,
            code: Some("connection".into()),
            message: "the connection closed after the lease check; the write was not sent".into(),
        })
    }

    /// Forget the connection of `generation`, which failed, so the next operation
    /// reconnects: only while the slot still holds it. A failure on a connection another task
    /// replaced meanwhile leaves the fresh one alone (second reader's finding 6: clearing it
    /// dropped a live connection and made every task reconnect again).
    async fn drop_connection(&self, generation: u64) {
        self.slot.lock().await.clear_if(generation);
    }

    /// Run one write on the live connection (the caller made it ready and checked its lease
    /// since: [`LdapTarget::connected`]); connection errors drop the connection. Returns the
    /// raw result (the caller decides which result codes are fine).
    async fn run<F, Fut>(&self, what: &str, op: F) -> Result<LdapResult, TargetError>
    where
        F: FnOnce(Ldap) -> Fut,
        Fut: Future<Output = Result<LdapResult, LdapError>>,
    {
        let (generation, ldap) = self.live().await?;
        match op(ldap).await {
            Ok(res) => Ok(res),
            Err(e) => {
                if codes::is_connection_error(&e) {
                    self.drop_connection(generation).await;
                }
                Err(codes::from_ldap_error(&e, what))
            }
        }
    }

    /// One base search of `dn` for `wanted`; `None` when the entry does not exist.
    async fn search_base(
        &self,
        dn: &str,
        wanted: Vec<String>,
    ) -> Result<Option<SearchEntry>, TargetError> {
        let what = format!("read {dn}");
        let (generation, ldap) = self.handle().await?;
        let t = self.settings.timeout;
        let owned_dn = dn.to_owned();
        self.ops.search();
        let res = async move {
            let mut ldap = ldap;
            ldap.with_timeout(t)
                .search(&owned_dn, Scope::Base, "(objectClass=*)", wanted)
                .await
        }
        .await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                if codes::is_connection_error(&e) {
                    self.drop_connection(generation).await;
                }
                return Err(codes::from_ldap_error(&e, &what));
            }
        };
        if res.1.rc == codes::NO_SUCH_OBJECT {
            return Ok(None);
        }
        if res.1.rc != 0 {
            return Err(codes::from_result(res.1.rc, &res.1.text, &what));
        }
        Ok(res.0.into_iter().next().map(SearchEntry::construct))
    }

    /// Read one entry (base search), with these attributes (plus `objectClass`). `None` when
    /// it does not exist. Attribute names are lower-cased. On AD, `member` is read ranged
    /// (`member;range=0-1499`, then from where each answer ended, until `*`) and merged.
    pub(super) async fn read(
        &self,
        dn: &str,
        attrs: &[String],
    ) -> Result<Option<Entry>, TargetError> {
        // Connect first: the flavour is known from then on.
        self.handle().await?;
        let ranged = self.flavour() == Flavour::Ad;
        let mut wanted: Vec<String> = attrs
            .iter()
            .map(|a| {
                if ranged && a.eq_ignore_ascii_case("member") {
                    flavour::range_request("member", 0)
                } else {
                    a.clone()
                }
            })
            .collect();
        wanted.push("objectClass".into());
        let Some(se) = self.search_base(dn, wanted).await? else {
            return Ok(None);
        };
        self.ops.read(se.attrs.values().map(Vec::len).sum());
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut object_classes = Vec::new();
        let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in se.attrs {
            if k.eq_ignore_ascii_case("objectclass") {
                object_classes = v;
            } else {
                got.entry(k.to_ascii_lowercase()).or_default().extend(v);
            }
        }
        let what = format!("read {dn}");
        let mut expected = BTreeMap::new();
        let mut next = flavour::merge_ranged(&mut out, got, &expected)
            .map_err(|e| codes::from_result(1, &e, &what))?;
        // Each step starts where the last ended, so this ends after (values / step) reads.
        while let Some((attr, start)) = next.pop() {
            expected.insert(attr.clone(), start);
            let Some(se) = self
                .search_base(dn, vec![flavour::range_request(&attr, start)])
                .await?
            else {
                return Ok(None);
            };
            self.ops.read(se.attrs.values().map(Vec::len).sum());
            let got: BTreeMap<String, Vec<String>> = se
                .attrs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .filter(|(k, _)| k.starts_with(&format!("{attr};")))
                .collect();
            if got.is_empty() {
                // Past the last value: the server has no more to send.
                continue;
            }
            next.extend(
                flavour::merge_ranged(&mut out, got, &expected)
                    .map_err(|e| codes::from_result(1, &e, &what))?,
            );
        }
        Ok(Some(Entry {
            key: se.dn,
            object_classes,
            attrs: out,
        }))
    }

    /// Whether the entry at `dn` matches `filter` (a base search returning no attributes):
    /// what a group's member values hold, asked without reading them (`(member=<dn>)`,
    /// `(member=*)`). False when the entry is gone.
    pub(super) async fn matches(&self, dn: &str, filter: &str) -> Result<bool, TargetError> {
        let what = format!("search {dn} for {filter}");
        let (generation, ldap) = self.handle().await?;
        let t = self.settings.timeout;
        let (owned_dn, owned_filter) = (dn.to_owned(), filter.to_owned());
        self.ops.search();
        let res = async move {
            let mut ldap = ldap;
            ldap.with_timeout(t)
                .search(&owned_dn, Scope::Base, &owned_filter, vec!["1.1"])
                .await
        }
        .await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                if codes::is_connection_error(&e) {
                    self.drop_connection(generation).await;
                }
                return Err(codes::from_ldap_error(&e, &what));
            }
        };
        if res.1.rc == codes::NO_SUCH_OBJECT {
            return Ok(false);
        }
        if res.1.rc != 0 {
            return Err(codes::from_result(res.1.rc, &res.1.text, &what));
        }
        Ok(!res.0.is_empty())
    }

    /// The stable id of the entry at `dn` (the flavour's id attribute; AD's binary
    /// `objectGUID` as hex), or `None` when there is no entry or no id.
    pub(super) async fn read_id(&self, dn: &str) -> Result<Option<String>, TargetError> {
        self.handle().await?;
        let f = self.flavour();
        let attr = f.id_attribute();
        let Some(se) = self.search_base(dn, vec![attr.to_owned()]).await? else {
            return Ok(None);
        };
        Ok(id_of(&se.attrs, &se.bin_attrs, f))
    }

    /// Whether the entry at `dn` holds `value` in `attr` (the server's own matching rule, by a
    /// filter: no value list is read). For codes that mean "already so" only when confirmed.
    pub(super) async fn has_value(
        &self,
        dn: &str,
        attr: &str,
        value: &str,
    ) -> Result<bool, TargetError> {
        let filter = format!("({attr}={})", ldap3::ldap_escape(value));
        self.matches(dn, &filter).await
    }

    /// The DN of the entry whose stable id (the flavour's, see [`LdapTarget::read_id`]) is
    /// `uuid` in the subtree of `base` (an entry that moved since its DN was recorded); `None`
    /// when there is none or `base` is missing.
    pub(super) async fn find_by_uuid(
        &self,
        base: &str,
        uuid: &str,
    ) -> Result<Option<String>, TargetError> {
        self.handle().await?;
        let f = self.flavour();
        let Some(filter) = f.id_filter(uuid) else {
            return Ok(None);
        };
        self.find_dn(base, &filter).await
    }

    /// The DN of the first entry matching `filter` in the subtree of `base`; `None` when there
    /// is none or `base` is missing.
    pub(super) async fn find_dn(
        &self,
        base: &str,
        filter: &str,
    ) -> Result<Option<String>, TargetError> {
        let what = format!("search {base} for {filter}");
        let filter = filter.to_owned();
        let (generation, ldap) = self.handle().await?;
        let t = self.settings.timeout;
        let owned_base = base.to_owned();
        self.ops.search();
        let res = async move {
            let mut ldap = ldap;
            ldap.with_timeout(t)
                .search(&owned_base, Scope::Subtree, &filter, vec!["1.1"])
                .await
        }
        .await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                if codes::is_connection_error(&e) {
                    self.drop_connection(generation).await;
                }
                return Err(codes::from_ldap_error(&e, &what));
            }
        };
        if res.1.rc == codes::NO_SUCH_OBJECT {
            return Ok(None);
        }
        if res.1.rc != 0 {
            return Err(codes::from_result(res.1.rc, &res.1.text, &what));
        }
        Ok(res
            .0
            .into_iter()
            .next()
            .map(|raw| SearchEntry::construct(raw).dn))
    }

    /// Add an entry; returns the result code (0 or 68; other codes are errors) and, when the
    /// server offers the Post-Read control (RFC 4527), the new entry's stable id as its answer
    /// carried it (the flavour's id attribute, as [`LdapTarget::read_id`] gives it): `Some`
    /// only for a successful add whose answer held it, so the caller reads it afterwards
    /// otherwise.
    pub(super) async fn add(
        &self,
        dn: &str,
        attrs: Vec<(String, Vec<String>)>,
    ) -> Result<(u32, Option<String>), TargetError> {
        let what = format!("add {dn}");
        let t = self.settings.timeout;
        let attrs: Vec<(String, HashSet<String>)> = attrs
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
        let dn = dn.to_owned();
        let flavour = self.flavour();
        let id_attr = flavour.id_attribute();
        let post_read = self.post_read.get().copied().unwrap_or(false);
        self.ops.add();
        let res = self
            .run(&what, |mut l| async move {
                if post_read {
                    l.with_controls(ldap3::controls::PostRead::new(vec![id_attr]));
                }
                l.with_timeout(t).add(&dn, attrs).await
            })
            .await?;
        let id = if res.rc == 0 && post_read {
            post_read_id(&res, flavour)
        } else {
            None
        };
        Ok((expect(res, &[codes::ENTRY_ALREADY_EXISTS], &what)?, id))
    }

    /// Modify an entry; `ok` lists result codes that count as success.
    pub(super) async fn modify(
        &self,
        dn: &str,
        mods: Vec<ldap3::Mod<String>>,
        ok: &[u32],
    ) -> Result<u32, TargetError> {
        let what = format!("modify {dn}");
        let t = self.settings.timeout;
        let dn = dn.to_owned();
        let values = mods
            .iter()
            .map(|m| match m {
                ldap3::Mod::Add(_, v) | ldap3::Mod::Delete(_, v) | ldap3::Mod::Replace(_, v) => {
                    v.len()
                }
                ldap3::Mod::Increment(..) => 1,
            })
            .sum();
        self.ops.modify(values);
        let res = self
            .run(&what, |mut l| async move {
                l.with_timeout(t).modify(&dn, mods).await
            })
            .await?;
        expect(res, ok, &what)
    }

    /// Rename/move an entry; returns 0, or 32 when the entry is gone.
    pub(super) async fn modrdn(
        &self,
        dn: &str,
        rdn: &str,
        new_sup: Option<&str>,
    ) -> Result<u32, TargetError> {
        let what = format!("modrdn {dn}");
        let t = self.settings.timeout;
        let (dn, rdn, sup) = (dn.to_owned(), rdn.to_owned(), new_sup.map(str::to_owned));
        self.ops.modrdn();
        let res = self
            .run(&what, |mut l| async move {
                l.with_timeout(t)
                    .modifydn(&dn, &rdn, true, sup.as_deref())
                    .await
            })
            .await?;
        expect(res, &[codes::NO_SUCH_OBJECT], &what)
    }

    /// Delete an entry; "no such object" counts as done.
    pub(super) async fn delete(&self, dn: &str) -> Result<u32, TargetError> {
        let what = format!("delete {dn}");
        let t = self.settings.timeout;
        let dn = dn.to_owned();
        self.ops.delete();
        let res = self
            .run(
                &what,
                |mut l| async move { l.with_timeout(t).delete(&dn).await },
            )
            .await?;
        expect(res, &[codes::NO_SUCH_OBJECT], &what)
    }

    /// The DNs of the entries one level below `base` that our bind DN created (the
    /// directory's `creatorsName`), read with the paged-results control in pages of `page`
    /// and handed to `each` page by page, so a large container never loads at once. A missing
    /// `base` is no entry. Without a bind DN (anonymous) nothing can be attributed: no call.
    ///
    /// # Errors
    /// The failure, classified.
    pub async fn created_by_us<F: FnMut(Vec<String>)>(
        &self,
        base: &str,
        page: i32,
        mut each: F,
    ) -> Result<(), TargetError> {
        use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
        let Some(bind) = self.settings.bind_dn.as_deref() else {
            return Ok(());
        };
        let what = format!("paged search below {base}");
        let filter = format!("(creatorsName={})", ldap3::ldap_escape(bind));
        let (generation, mut ldap) = self.handle().await?;
        let adapters: Vec<Box<dyn Adapter<'_, &str, Vec<&str>>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(page.max(1))),
        ];
        self.ops.search();
        let result = async {
            let mut stream = ldap
                .with_timeout(self.settings.timeout)
                .streaming_search_with(adapters, base, Scope::OneLevel, &filter, vec!["1.1"])
                .await?;
            let mut batch = Vec::new();
            while let Some(raw) = stream.next().await? {
                batch.push(SearchEntry::construct(raw).dn);
                if batch.len() >= usize::try_from(page).unwrap_or(1).max(1) {
                    each(std::mem::take(&mut batch));
                }
            }
            each(batch);
            Ok::<LdapResult, LdapError>(stream.finish().await)
        }
        .await;
        match result {
            Ok(res) if res.rc == 0 || res.rc == codes::NO_SUCH_OBJECT => Ok(()),
            Ok(res) => Err(codes::from_result(res.rc, &res.text, &what)),
            Err(e) => {
                if codes::is_connection_error(&e) {
                    self.drop_connection(generation).await;
                }
                Err(codes::from_ldap_error(&e, &what))
            }
        }
    }

    /// Read one entry with these attributes (plus `objectClass`); `None` when it does not
    /// exist. Attribute names are lower-cased. For `verify`, which shows what is there.
    ///
    /// # Errors
    /// The failure, classified.
    pub async fn read_entry(
        &self,
        dn: &str,
        attrs: &[String],
    ) -> Result<Option<Entry>, TargetError> {
        self.read(dn, attrs).await
    }

    /// Connect, bind and read the users' base (or the root DSE).
    pub(super) async fn check(&self) -> Result<(), TargetError> {
        let base = self.settings.users.base.clone().unwrap_or_default();
        match self.read(&base, &[]).await? {
            Some(_) => Ok(()),
            None => Err(TargetError {
                class: ErrorClass::Permanent,
                code: Some(codes::NO_SUCH_OBJECT.to_string()),
                message: format!("healthcheck: the users' base {base:?} does not exist"),
            }),
        }
    }
}

/// The connection slot: the current connection with its generation (a number no other
/// connection of this target had), so a failure is forgotten only on the connection it
/// happened on ([`Slot::clear_if`]).
#[derive(Debug)]
struct Slot<T> {
    current: Option<(u64, T)>,
    /// Generations handed out.
    last: u64,
}

impl<T> Default for Slot<T> {
    fn default() -> Slot<T> {
        Slot {
            current: None,
            last: 0,
        }
    }
}

impl<T> Slot<T> {
    /// Hold `conn` from now on; its generation.
    fn set(&mut self, conn: T) -> u64 {
        self.last = self.last.wrapping_add(1);
        self.current = Some((self.last, conn));
        self.last
    }

    fn get_mut(&mut self) -> Option<(u64, &mut T)> {
        self.current.as_mut().map(|(g, c)| (*g, c))
    }

    /// Forget the connection of `generation` if it is still the current one; whether it was.
    fn clear_if(&mut self, generation: u64) -> bool {
        if self.current.as_ref().is_some_and(|(g, _)| *g == generation) {
            self.current = None;
            return true;
        }
        false
    }
}

/// The Post-Read control's OID (RFC 4527 §3.2), as a root DSE lists it in `supportedControl`.
const POST_READ_OID: &str = "1.3.6.1.1.13.2";

/// The stable id in an add's Post-Read answer control, if it carries one. A control the
/// server sent malformed is no id (ldap3's parser panics on it; the caller then reads the id
/// with a search).
fn post_read_id(res: &LdapResult, flavour: Flavour) -> Option<String> {
    use ldap3::controls::{ControlType, PostReadResp};
    let raw = res.ctrls.iter().find_map(|c| match c {
        ldap3::controls::Control(Some(ControlType::PostReadResp), raw) => Some(raw),
        _ => None,
    })?;
    let parsed =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| raw.parse::<PostReadResp>()))
            .ok()?;
    id_of(&parsed.attrs, &parsed.bin_attrs, flavour)
}

/// The flavour's stable id among an entry's attributes (AD's binary `objectGUID` as hex).
fn id_of(
    attrs: &std::collections::HashMap<String, Vec<String>>,
    bin_attrs: &std::collections::HashMap<String, Vec<Vec<u8>>>,
    flavour: Flavour,
) -> Option<String> {
    let attr = flavour.id_attribute();
    let text = attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .and_then(|(_, v)| v.first().cloned());
    if flavour == Flavour::Ad {
        // Binary; ldap3 hands a value that happens to be valid UTF-8 over as text.
        let bytes = bin_attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(attr))
            .and_then(|(_, v)| v.first().cloned())
            .or_else(|| text.map(String::into_bytes));
        return bytes.map(|b| flavour::id_from_binary(&b));
    }
    text
}

fn expect(res: LdapResult, ok: &[u32], what: &str) -> Result<u32, TargetError> {
    if res.rc == 0 || ok.contains(&res.rc) {
        Ok(res.rc)
    } else {
        Err(codes::from_result(res.rc, &res.text, what))
    }
}

fn load_ca(path: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    let mut count = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
        count += 1;
    }
    if count == 0 {
        return Err("no PEM certificate found".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Drive the connection in the background. The daemon's `TaskTracker` does not exist yet;
/// when it does, this is the one place to route the spawn through it. The task ends when
/// the connection closes (every `Ldap` handle dropped, or the socket lost).
#[allow(clippy::disallowed_methods)]
fn spawn_driver(conn: LdapConnAsync) {
    tokio::spawn(async move {
        if let Err(error) = conn.drive().await {
            tracing::debug!(error = %error, "LDAP connection closed.");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::Slot;

    /// Second reader's finding 6: a task whose write failed on the old connection (after
    /// another task reconnected) must not clear the fresh one. Before, the slot was an
    /// `Option` cleared unconditionally.
    #[test]
    fn a_failure_on_a_replaced_connection_leaves_the_new_one() {
        let mut slot = Slot::default();
        let old = slot.set("old");
        // Another task saw the old one fail and reconnected.
        assert!(slot.clear_if(old));
        let new = slot.set("new");
        assert_ne!(old, new);
        // The first task's failure on the old connection arrives late.
        assert!(!slot.clear_if(old));
        assert_eq!(slot.get_mut().map(|(g, c)| (g, *c)), Some((new, "new")));
        // A failure on the current one forgets it.
        assert!(slot.clear_if(new));
        assert!(slot.get_mut().is_none());
    }
}
