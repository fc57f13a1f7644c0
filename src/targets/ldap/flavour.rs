//! What differs between the directories scim-sync writes to, as pure facts: which directory a
//! root DSE belongs to, which result codes of a value operation inside a modify mean "already
//! so", the attribute holding an entry's stable id, how an account is disabled, AD's ranged
//! attribute retrieval (`member;range=0-1499` ... `member;range=1500-*`), and AD's
//! `sAMAccountName` limits. No I/O: `conn.rs` and `apply.rs` ask.
//!
//! The result codes were measured on the real servers the tests start (OpenLDAP 2.5,
//! 389-DS 2.3.1, Samba 4.17 AD DC; `tests/directories/`): adding a value already present and
//! deleting a value that is absent answer
//!
//! | directory | add present value | delete absent value |
//! |---|---|---|
//! | OpenLDAP | 20 attributeOrValueExists | 16 noSuchAttribute |
//! | 389-DS | 20 | 16 |
//! | AD (Samba), linked attributes (`member`) | 68 entryAlreadyExists | 53 unwillingToPerform |
//! | AD (Samba), other attributes | 20 | 16 |
//!
//! 68 and 53 mean much else in AD (53 also "unwilling" for any reason), so for AD they are
//! "already so" only once a read confirms the value is (or is not) there (`apply.rs`); 68 on an
//! entry add stays the conflict it is.

pub use crate::config::target::LdapFlavour as Flavour;
use std::collections::BTreeMap;

/// A value operation inside a modify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueOp {
    /// Add values.
    Add,
    /// Delete named values.
    Delete,
}

/// `supportedCapabilities` value of Active Directory (and Samba AD DC):
/// `LDAP_CAP_ACTIVE_DIRECTORY_OID`.
pub const AD_CAPABILITY: &str = "1.2.840.113556.1.4.800";

/// AD `userAccountControl` bit: the account is disabled (`ACCOUNTDISABLE`).
pub const UF_ACCOUNTDISABLE: i64 = 0x2;

/// Values AD returns per ranged read at most (its default `MaxValRange`); we ask for this many
/// per step, and follow whatever range the server answers.
pub const AD_RANGE_STEP: u32 = 1500;

/// The attribute the bookkeeping's `entry_uuid` records, per flavour.
pub const AD_ID: &str = "objectGUID";

impl Flavour {
    /// The config spelling.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Flavour::OpenLdap => "openldap",
            Flavour::Ds389 => "389ds",
            Flavour::Ad => "ad",
        }
    }

    /// The directory a root DSE (lower-cased attribute names) belongs to, and why. Anything
    /// unrecognised is treated as OpenLDAP (RFC result codes, `entryUUID`), and says so.
    #[must_use]
    pub fn detect(root_dse: &BTreeMap<String, Vec<String>>) -> (Flavour, String) {
        let values = |k: &str| root_dse.get(k).map(Vec::as_slice).unwrap_or_default();
        if values("supportedcapabilities")
            .iter()
            .any(|c| c.trim() == AD_CAPABILITY)
        {
            return (
                Flavour::Ad,
                format!("supportedCapabilities has {AD_CAPABILITY} (Active Directory)"),
            );
        }
        if let Some(v) = values("vendorname")
            .iter()
            .find(|v| v.contains("389") || v.to_ascii_lowercase().contains("fedora"))
        {
            return (Flavour::Ds389, format!("vendorName is {v:?}"));
        }
        let ocs: Vec<String> = values("objectclass")
            .iter()
            .chain(values("structuralobjectclass"))
            .map(|o| o.to_ascii_lowercase())
            .collect();
        if ocs.iter().any(|o| o == "openldaprootdse") {
            return (Flavour::OpenLdap, "objectClass OpenLDAProotDSE".into());
        }
        (
            Flavour::OpenLdap,
            "unrecognised root DSE: treated as OpenLDAP (set flavour to choose)".into(),
        )
    }

    /// Result codes that mean "already so" for `op` on this directory (before any
    /// confirmation, see [`Flavour::needs_confirmation`]).
    #[must_use]
    pub fn already_so(self, op: ValueOp) -> &'static [u32] {
        match (self, op) {
            (Flavour::OpenLdap | Flavour::Ds389, ValueOp::Add) => &[20],
            (Flavour::OpenLdap | Flavour::Ds389, ValueOp::Delete) => &[16],
            (Flavour::Ad, ValueOp::Add) => &[20, 68],
            (Flavour::Ad, ValueOp::Delete) => &[16, 53],
        }
    }

    /// Every code of [`Flavour::already_so`], both operations.
    #[must_use]
    pub fn any_already_so(self) -> Vec<u32> {
        let mut all: Vec<u32> = self.already_so(ValueOp::Add).to_vec();
        all.extend(self.already_so(ValueOp::Delete));
        all
    }

    /// Whether `rc` for `op` counts as "already so" only once a read shows the value is there
    /// (add) or not (delete): the codes that mean other things too.
    #[must_use]
    pub fn needs_confirmation(self, op: ValueOp, rc: u32) -> bool {
        matches!(
            (self, op, rc),
            (Flavour::Ad, ValueOp::Add, 68) | (Flavour::Ad, ValueOp::Delete, 53)
        )
    }

    /// The attribute holding an entry's stable id (it survives renames and moves).
    #[must_use]
    pub fn id_attribute(self) -> &'static str {
        match self {
            Flavour::OpenLdap => "entryUUID",
            Flavour::Ds389 => "nsUniqueId",
            Flavour::Ad => AD_ID,
        }
    }

    /// A search filter for the entry whose id (as recorded, see [`id_from_binary`]) is `id`;
    /// `None` when `id` cannot be one of this directory's.
    #[must_use]
    pub fn id_filter(self, id: &str) -> Option<String> {
        match self {
            Flavour::Ad => {
                let bytes = hex_decode(id).filter(|b| b.len() == 16)?;
                let escaped: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
                Some(format!("(objectGUID={escaped})"))
            }
            other => Some(format!(
                "({}={})",
                other.id_attribute(),
                ldap3::ldap_escape(id)
            )),
        }
    }

    /// What `users.deactivate.policy = "disable"` sets when `set` is not configured: OpenLDAP
    /// ppolicy's permanent lock, 389-DS's `nsAccountLock`. AD has none: its disable is a bit of
    /// `userAccountControl` ([`with_account_disabled`]), not a value to set.
    #[must_use]
    pub fn default_disable_set(self) -> Option<BTreeMap<String, Vec<String>>> {
        let (a, v) = match self {
            Flavour::OpenLdap => ("pwdaccountlockedtime", "000001010000Z"),
            Flavour::Ds389 => ("nsaccountlock", "TRUE"),
            Flavour::Ad => return None,
        };
        Some([(a.to_owned(), vec![v.to_owned()])].into_iter().collect())
    }
}

/// A binary id (AD `objectGUID`, 16 bytes) as recorded: lower-case hex of the bytes as sent.
#[must_use]
pub fn id_from_binary(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// AD `userAccountControl` (decimal, as AD writes it; a signed 32-bit value) with the
/// `ACCOUNTDISABLE` bit set or cleared and every other bit kept; `None` when the value is
/// not a number.
#[must_use]
pub fn with_account_disabled(uac: &str, disabled: bool) -> Option<String> {
    let v: i64 = uac.trim().parse().ok()?;
    let out = if disabled {
        v | UF_ACCOUNTDISABLE
    } else {
        v & !UF_ACCOUNTDISABLE
    };
    Some(out.to_string())
}

/// Whether an AD `userAccountControl` value has `ACCOUNTDISABLE` set.
#[must_use]
pub fn account_disabled(uac: &str) -> Option<bool> {
    uac.trim()
        .parse::<i64>()
        .ok()
        .map(|v| v & UF_ACCOUNTDISABLE != 0)
}

/// One ranged attribute of a search result: `member;range=1500-2999` is
/// `("member", 1500, Some(2999))`, `member;range=3000-*` is `("member", 3000, None)`.
/// Attribute names are taken as given (the caller lower-cases).
#[must_use]
pub fn parse_range(key: &str) -> Option<(&str, u32, Option<u32>)> {
    let (attr, opts) = key.split_once(';')?;
    let range = opts.split(';').find_map(|o| {
        o.strip_prefix("range=")
            .or_else(|| o.strip_prefix("Range="))
    })?;
    let (lo, hi) = range.split_once('-')?;
    let lo: u32 = lo.parse().ok()?;
    let hi = if hi == "*" {
        None
    } else {
        let hi: u32 = hi.parse().ok()?;
        if hi < lo {
            return None;
        }
        Some(hi)
    };
    Some((attr, lo, hi))
}

/// The attribute to ask for to read `attr` ranged from `start` (`member;range=1500-2999`).
#[must_use]
pub fn range_request(attr: &str, start: u32) -> String {
    format!(
        "{attr};range={start}-{}",
        start.saturating_add(AD_RANGE_STEP - 1)
    )
}

/// Folds the ranged attributes of one search result into `into` (values appended under the
/// plain name) and returns what is still to read: `(attr, next start)` for each range that did
/// not end in `*`. Non-ranged attributes are appended as they are. A range that does not
/// continue where the last one ended (`expected` start per attribute) is an error: the server
/// skipped or repeated values, and a merged value list would be wrong.
///
/// # Errors
/// A ranged attribute whose start is not the expected one, or whose range does not parse.
pub fn merge_ranged(
    into: &mut BTreeMap<String, Vec<String>>,
    got: BTreeMap<String, Vec<String>>,
    expected: &BTreeMap<String, u32>,
) -> Result<Vec<(String, u32)>, String> {
    let mut next = Vec::new();
    for (key, values) in got {
        if !key.contains(";range=") {
            into.entry(key).or_default().extend(values);
            continue;
        }
        let (attr, lo, hi) =
            parse_range(&key).ok_or_else(|| format!("unparsable ranged attribute {key:?}"))?;
        let want = expected.get(attr).copied().unwrap_or(0);
        if lo != want {
            return Err(format!(
                "ranged attribute {key:?} starts at {lo}, expected {want}"
            ));
        }
        let attr = attr.to_owned();
        if let Some(hi) = hi {
            next.push((attr.clone(), hi.saturating_add(1)));
        }
        into.entry(attr).or_default().extend(values);
    }
    Ok(next)
}

/// Characters AD refuses in a `sAMAccountName`.
pub const SAM_FORBIDDEN: &[char] = &[
    '"', '/', '\\', '[', ']', ':', ';', '|', '=', ',', '+', '*', '?', '<', '>', '@',
];

/// Longest `sAMAccountName` of a user AD accepts (the pre-Windows 2000 logon name).
pub const SAM_MAX_CHARS: usize = 20;

/// Why AD would refuse `name` as a user's `sAMAccountName` (`None`: acceptable): longer than
/// 20 characters, a forbidden character (`SAM_FORBIDDEN`, a control character), empty,
/// all dots and spaces, or ending in a dot.
#[must_use]
pub fn sam_account_name_problem(name: &str) -> Option<String> {
    let n = name.chars().count();
    if n == 0 {
        return Some("sAMAccountName is empty".into());
    }
    if n > SAM_MAX_CHARS {
        return Some(format!(
            "sAMAccountName {name:?} has {n} characters; AD takes at most {SAM_MAX_CHARS}"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| SAM_FORBIDDEN.contains(c) || c.is_control())
    {
        return Some(format!(
            "sAMAccountName {name:?} has {c:?}, which AD does not accept"
        ));
    }
    if name.chars().all(|c| c == '.' || c == ' ') {
        return Some(format!("sAMAccountName {name:?} is only dots and spaces"));
    }
    if name.ends_with('.') {
        return Some(format!("sAMAccountName {name:?} ends with a dot"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dse(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn the_root_dse_names_the_directory() {
        // As the three servers of the tests answer.
        let samba = dse(&[
            (
                "supportedcapabilities",
                &["1.2.840.113556.1.4.800", "1.2.840.113556.1.4.1670"],
            ),
            ("vendorname", &["Samba Team (https://www.samba.org)"]),
        ]);
        assert_eq!(Flavour::detect(&samba).0, Flavour::Ad);
        let ds = dse(&[("vendorname", &["389 Project"]), ("objectclass", &["top"])]);
        assert_eq!(Flavour::detect(&ds).0, Flavour::Ds389);
        let ol = dse(&[("objectclass", &["top", "OpenLDAProotDSE"])]);
        assert_eq!(Flavour::detect(&ol).0, Flavour::OpenLdap);
        let (f, why) = Flavour::detect(&dse(&[("vendorname", &["Someone"])]));
        assert_eq!(f, Flavour::OpenLdap);
        assert!(why.contains("unrecognised"), "{why}");
    }

    #[test]
    fn the_measured_codes_are_already_so_per_directory() {
        for f in [Flavour::OpenLdap, Flavour::Ds389] {
            assert_eq!(f.already_so(ValueOp::Add), &[20]);
            assert_eq!(f.already_so(ValueOp::Delete), &[16]);
            assert!(!f.needs_confirmation(ValueOp::Add, 20));
        }
        let ad = Flavour::Ad;
        assert!(ad.already_so(ValueOp::Add).contains(&68));
        assert!(ad.already_so(ValueOp::Delete).contains(&53));
        assert!(ad.already_so(ValueOp::Add).contains(&20));
        assert!(ad.already_so(ValueOp::Delete).contains(&16));
        // 68 is never "already so" for a delete, 53 never for an add, on any directory.
        for f in [Flavour::OpenLdap, Flavour::Ds389, Flavour::Ad] {
            assert!(!f.already_so(ValueOp::Delete).contains(&68), "{f:?}");
            assert!(!f.already_so(ValueOp::Add).contains(&53), "{f:?}");
            assert!(!f.already_so(ValueOp::Add).contains(&32), "{f:?}");
        }
        assert!(ad.needs_confirmation(ValueOp::Add, 68));
        assert!(ad.needs_confirmation(ValueOp::Delete, 53));
        assert!(!ad.needs_confirmation(ValueOp::Add, 20));
        assert!(!ad.needs_confirmation(ValueOp::Delete, 16));
    }

    #[test]
    fn ids_and_their_filters() {
        assert_eq!(Flavour::OpenLdap.id_attribute(), "entryUUID");
        assert_eq!(Flavour::Ds389.id_attribute(), "nsUniqueId");
        assert_eq!(Flavour::Ad.id_attribute(), "objectGUID");
        let guid = [
            0xdc, 0x1b, 0x8e, 0x2e, 0x3d, 0xdf, 0x8a, 0x45, 0xab, 0xc0, 0xe0, 0xd6, 0x9c, 0x33,
            0x6f, 0xa2,
        ];
        let id = id_from_binary(&guid);
        assert_eq!(id, "dc1b8e2e3ddf8a45abc0e0d69c336fa2");
        assert_eq!(
            Flavour::Ad.id_filter(&id).unwrap(),
            r"(objectGUID=\dc\1b\8e\2e\3d\df\8a\45\ab\c0\e0\d6\9c\33\6f\a2)"
        );
        assert_eq!(Flavour::Ad.id_filter("not hex"), None);
        assert_eq!(Flavour::Ad.id_filter("abcd"), None);
        assert_eq!(
            Flavour::Ds389
                .id_filter("c1ae2c98-eda511f1-a50c8f35-4e77a221")
                .unwrap(),
            "(nsUniqueId=c1ae2c98-eda511f1-a50c8f35-4e77a221)"
        );
        assert_eq!(
            Flavour::OpenLdap.id_filter("a*)").unwrap(),
            r"(entryUUID=a\2a\29)"
        );
    }

    #[test]
    fn the_disable_bit_is_set_and_cleared_alone() {
        // 546 = NORMAL_ACCOUNT | PASSWD_NOTREQD | ACCOUNTDISABLE (a new Samba user).
        assert_eq!(with_account_disabled("546", false).as_deref(), Some("544"));
        assert_eq!(with_account_disabled("544", true).as_deref(), Some("546"));
        assert_eq!(with_account_disabled("546", true).as_deref(), Some("546"));
        assert_eq!(with_account_disabled("512", false).as_deref(), Some("512"));
        // DONT_EXPIRE_PASSWORD | NORMAL_ACCOUNT | ACCOUNTDISABLE: the others stay.
        assert_eq!(
            with_account_disabled("66050", false).as_deref(),
            Some("66048")
        );
        // A negative value (bit 31 set) keeps its sign.
        assert_eq!(
            with_account_disabled("-2147483136", true).as_deref(),
            Some("-2147483134")
        );
        assert_eq!(with_account_disabled("x", true), None);
        assert_eq!(account_disabled("514"), Some(true));
        assert_eq!(account_disabled("512"), Some(false));
    }

    #[test]
    fn default_disable_values() {
        let ol = Flavour::OpenLdap.default_disable_set().unwrap();
        assert_eq!(ol["pwdaccountlockedtime"], ["000001010000Z"]);
        let ds = Flavour::Ds389.default_disable_set().unwrap();
        assert_eq!(ds["nsaccountlock"], ["TRUE"]);
        assert_eq!(Flavour::Ad.default_disable_set(), None);
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(
            parse_range("member;range=0-1499"),
            Some(("member", 0, Some(1499)))
        );
        assert_eq!(
            parse_range("member;range=1500-*"),
            Some(("member", 1500, None))
        );
        assert_eq!(parse_range("member;range=10-5"), None);
        assert_eq!(parse_range("member"), None);
        assert_eq!(parse_range("member;range=x-*"), None);
        assert_eq!(range_request("member", 0), "member;range=0-1499");
        assert_eq!(range_request("member", 1500), "member;range=1500-2999");
    }

    fn vals(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn ranged_reads_merge_to_every_value_once() {
        let mut into = BTreeMap::new();
        let first: BTreeMap<String, Vec<String>> = [
            ("member;range=0-1499".to_owned(), vals("m", 0..1500)),
            ("cn".to_owned(), vec!["g".to_owned()]),
        ]
        .into_iter()
        .collect();
        let next = merge_ranged(&mut into, first, &BTreeMap::new()).unwrap();
        assert_eq!(next, vec![("member".to_owned(), 1500)]);
        // The server may answer a smaller range than asked (its MaxValRange): follow it.
        let expected: BTreeMap<String, u32> = [("member".to_owned(), 1500)].into();
        let second = [("member;range=1500-2499".to_owned(), vals("m", 1500..2500))].into();
        let next = merge_ranged(&mut into, second, &expected).unwrap();
        assert_eq!(next, vec![("member".to_owned(), 2500)]);
        let expected: BTreeMap<String, u32> = [("member".to_owned(), 2500)].into();
        let last = [("member;range=2500-*".to_owned(), vals("m", 2500..5000))].into();
        let next = merge_ranged(&mut into, last, &expected).unwrap();
        assert!(next.is_empty());
        assert_eq!(into["member"], vals("m", 0..5000));
        assert_eq!(into["cn"], ["g"]);
    }

    #[test]
    fn an_unranged_answer_is_taken_whole_and_a_gap_is_an_error() {
        // Samba answers a plain `member` request with every value, unranged.
        let mut into = BTreeMap::new();
        let all = [("member".to_owned(), vals("m", 0..1600))].into();
        assert!(merge_ranged(&mut into, all, &BTreeMap::new())
            .unwrap()
            .is_empty());
        assert_eq!(into["member"].len(), 1600);
        let mut into = BTreeMap::new();
        let expected: BTreeMap<String, u32> = [("member".to_owned(), 1500)].into();
        let skipped = [("member;range=1600-*".to_owned(), vals("m", 1600..1700))].into();
        assert!(merge_ranged(&mut into, skipped, &expected).is_err());
        let bad = [("member;range=zz".to_owned(), vec![])].into();
        assert!(merge_ranged(&mut into, bad, &BTreeMap::new()).is_err());
        // An empty last range (the attribute ended exactly at a step) closes it.
        let empty = [("member;range=1500-*".to_owned(), vec![])].into();
        assert!(merge_ranged(&mut into, empty, &expected)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn sam_account_names_within_ads_limits() {
        assert_eq!(sam_account_name_problem("bjensen"), None);
        assert_eq!(sam_account_name_problem("b.jensen-2_x"), None);
        assert_eq!(sam_account_name_problem("exactly20characters_"), None);
        for bad in [
            "",
            "twenty-one-characters",
            "a/b",
            "a\\b",
            "a[b",
            "a:b",
            "a;b",
            "a|b",
            "a=b",
            "a,b",
            "a+b",
            "a*b",
            "a?b",
            "a<b",
            "a>b",
            "a\"b",
            "a@b",
            "...",
            "name.",
            "tab\there",
        ] {
            assert!(sam_account_name_problem(bad).is_some(), "{bad:?}");
        }
        // Characters, not bytes.
        assert_eq!(sam_account_name_problem("ééééééééééééééééééé"), None);
    }
}
