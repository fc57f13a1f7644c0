//! LDAP result codes (RFC 4511 Appendix A) and ldap3 errors, classified for the reconciler.
//! Owns the decision "retry forever" vs "give up after a few tries"; must not perform I/O.
//!
//! Which codes mean "done" (68 on add, 32 on delete) is decided by the caller in `apply.rs`,
//! which knows the operation; for value operations inside a modify (20 / 16, and AD's 68 / 53)
//! by the directory's table in `flavour.rs`.

use crate::targets::{ErrorClass, TargetError};
use ldap3::LdapError;

/// `noSuchAttribute`.
pub const NO_SUCH_ATTRIBUTE: u32 = 16;
/// `attributeOrValueExists`.
pub const ATTRIBUTE_OR_VALUE_EXISTS: u32 = 20;
/// `noSuchObject`.
pub const NO_SUCH_OBJECT: u32 = 32;
/// `invalidCredentials`.
pub const INVALID_CREDENTIALS: u32 = 49;
/// `insufficientAccessRights`.
pub const INSUFFICIENT_ACCESS_RIGHTS: u32 = 50;
/// `entryAlreadyExists`.
pub const ENTRY_ALREADY_EXISTS: u32 = 68;

/// The class of an LDAP result code.
#[must_use]
pub fn class_of(rc: u32) -> ErrorClass {
    match rc {
        // busy, unavailable, unwillingToPerform (often "database is read-only / shutting down"),
        // other, timeLimitExceeded, adminLimitExceeded, loopDetect is NOT retried.
        51 | 52 | 53 | 80 | 3 | 11 => ErrorClass::Transient,
        // Credentials and access rights: an operator must act, but the data is fine.
        INVALID_CREDENTIALS | INSUFFICIENT_ACCESS_RIGHTS => ErrorClass::Transient,
        // operationsError, protocolError and the rest of the client/server side issues.
        1 | 2 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// A short name for a result code.
#[must_use]
pub fn name_of(rc: u32) -> &'static str {
    match rc {
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        11 => "adminLimitExceeded",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        18 => "inappropriateMatching",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        67 => "notAllowedOnRDN",
        68 => "entryAlreadyExists",
        69 => "objectClassModsProhibited",
        80 => "other",
        _ => "ldapError",
    }
}

/// A failed LDAP result as a [`TargetError`]; `what` names the operation and DN.
#[must_use]
pub fn from_result(rc: u32, text: &str, what: &str) -> TargetError {
    let class = class_of(rc);
    let hint = match rc {
        INVALID_CREDENTIALS => " (check bind_dn and the bind password; an operator must act)",
        INSUFFICIENT_ACCESS_RIGHTS => " (the bind DN lacks rights; an operator must act)",
        _ => "",
    };
    let text = if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    };
    TargetError {
        class,
        code: Some(rc.to_string()),
        message: format!("{what}: LDAP {rc} {}{text}{hint}", name_of(rc)),
    }
}

/// Whether an ldap3 error means the connection is unusable (drop it and reconnect).
#[must_use]
pub fn is_connection_error(e: &LdapError) -> bool {
    matches!(
        e,
        LdapError::Io { .. }
            | LdapError::OpSend { .. }
            | LdapError::ResultRecv { .. }
            | LdapError::IdScrubSend { .. }
            | LdapError::MiscSend { .. }
            | LdapError::Timeout { .. }
            | LdapError::EndOfStream
            | LdapError::Rustls { .. }
    )
}

/// An ldap3 error as a [`TargetError`]; `what` names the operation and DN.
#[must_use]
pub fn from_ldap_error(e: &LdapError, what: &str) -> TargetError {
    match e {
        LdapError::LdapResult { result } => from_result(result.rc, &result.text, what),
        LdapError::Timeout { .. } => TargetError {
            class: ErrorClass::Transient,
            code: Some("timeout".into()),
            message: format!("{what}: timed out"),
        },
        LdapError::Rustls { .. } | LdapError::DNSName { .. } => TargetError {
            class: ErrorClass::Transient,
            code: Some("tls".into()),
            message: format!("{what}: TLS failure (check ca_file and the server certificate; an operator must act): {e}"),
        },
        e if is_connection_error(e) => TargetError {
            class: ErrorClass::Transient,
            code: Some("io".into()),
            message: format!("{what}: connection failed: {e}"),
        },
        LdapError::UrlParsing { .. } | LdapError::UnknownScheme(_) => TargetError {
            class: ErrorClass::Permanent,
            code: Some("config".into()),
            message: format!("{what}: {e}"),
        },
        // Library-side failures (e.g. an empty value set) are our bug: do not loop forever.
        _ => TargetError {
            class: ErrorClass::Permanent,
            code: None,
            message: format!("{what}: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for rc in [51, 52, 53, 80, 49, 50] {
            assert_eq!(class_of(rc), ErrorClass::Transient, "{rc}");
        }
        for rc in [21, 34, 64, 65, 67, 69, 32, 19, 17, 999] {
            assert_eq!(class_of(rc), ErrorClass::Permanent, "{rc}");
        }
    }

    #[test]
    fn credentials_message_tells_the_operator() {
        let e = from_result(49, "", "bind cn=x");
        assert_eq!(e.class, ErrorClass::Transient);
        assert_eq!(e.code.as_deref(), Some("49"));
        assert!(e.message.contains("operator must act"), "{}", e.message);
        let e = from_result(32, "no parent", "add uid=a");
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(e.message.contains("noSuchObject: no parent"));
    }

    #[test]
    fn io_is_transient() {
        let io = LdapError::Io {
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(is_connection_error(&io));
        assert_eq!(from_ldap_error(&io, "connect").class, ErrorClass::Transient);
    }
}
