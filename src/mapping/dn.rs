//! Distinguished names (RFC 4514), pure: splitting off the RDN, parsing for validation, and a
//! normal form for comparing DNs the server may spell differently (`\2C` vs `\,`, type case).
//! Values are escaped only with `ldap3::dn_escape`; nothing here formats raw data into a DN.

/// One attribute-value assertion of an RDN: (type as written, unescaped value).
pub type Ava = (String, String);

/// Parse a DN into RDNs of AVAs (values unescaped). The empty string is the root DN.
///
/// # Errors
/// A description of the syntax error.
pub fn parse_dn(dn: &str) -> Result<Vec<Vec<Ava>>, String> {
    let mut rdns = Vec::new();
    if dn.trim().is_empty() {
        return Ok(rdns);
    }
    let bytes = dn.as_bytes();
    let mut i = 0;
    let mut rdn: Vec<Ava> = Vec::new();
    loop {
        // attribute type
        let start = i;
        while i < bytes.len() && bytes.get(i) != Some(&b'=') {
            i += 1;
        }
        let ty = dn.get(start..i).unwrap_or("").trim();
        let ok_ty = !ty.is_empty()
            && ty
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
            && ty.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !ok_ty || i >= bytes.len() {
            return Err(format!("bad attribute type {ty:?} in DN {dn:?}"));
        }
        i += 1; // '='
        let mut value: Vec<u8> = Vec::new();
        let mut end_sep = None;
        while let Some(&c) = bytes.get(i) {
            match c {
                b'\\' => {
                    let n1 = bytes.get(i + 1).copied();
                    match n1 {
                        Some(h) if h.is_ascii_hexdigit() => {
                            let n2 = bytes
                                .get(i + 2)
                                .copied()
                                .filter(u8::is_ascii_hexdigit)
                                .ok_or_else(|| format!("bad hex escape in DN {dn:?}"))?;
                            let hex = [h, n2];
                            let s = std::str::from_utf8(&hex).map_err(|e| e.to_string())?;
                            value.push(u8::from_str_radix(s, 16).map_err(|e| e.to_string())?);
                            i += 3;
                        }
                        Some(other) => {
                            value.push(other);
                            i += 2;
                        }
                        None => return Err(format!("DN {dn:?} ends with a backslash")),
                    }
                }
                b',' | b'+' => {
                    end_sep = Some(c);
                    i += 1;
                    break;
                }
                b'"' | b';' | b'<' | b'>' | b'=' | 0 => {
                    return Err(format!("unescaped {:?} in DN {dn:?}", char::from(c)))
                }
                _ => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        let value = String::from_utf8(value).map_err(|_| format!("DN {dn:?} is not UTF-8"))?;
        if value.is_empty() {
            return Err(format!("empty value for {ty:?} in DN {dn:?}"));
        }
        rdn.push((ty.to_owned(), value));
        match end_sep {
            Some(b'+') => {}
            Some(_) => rdns.push(std::mem::take(&mut rdn)),
            None => {
                rdns.push(std::mem::take(&mut rdn));
                break;
            }
        }
        if i >= bytes.len() {
            return Err(format!("DN {dn:?} ends with a separator"));
        }
    }
    Ok(rdns)
}

/// A normal form for equality, as a directory server compares DNs: attribute types
/// lower-cased; values unescaped (`\2C`, `\,` and `,` inside a value are one character),
/// NFKC-normalised, case-folded and with RFC 4518 §2.6.1 insignificant spaces removed
/// (leading and trailing spaces dropped, inner runs of spaces one space: `"Finance  Team"`
/// and `"Finance Team"` are one DN), then re-escaped; the AVAs of a multi-valued RDN sorted.
/// The usual naming attributes (`cn`, `uid`, `ou`, `dc`, `o`, `l`, `mail`, ...) are
/// case-ignore; values of every type are folded, so for a rare case-exact naming attribute
/// two DNs differing only in case compare equal: a false conflict, never a merge. This is
/// the target key of an LDAP entry in the store's uniqueness index. Falls back to the
/// lower-cased input for an unparsable DN.
#[must_use]
pub fn normalize_dn(dn: &str) -> String {
    match parse_dn(dn) {
        Ok(rdns) => rdns
            .iter()
            .map(|rdn| {
                let mut avas: Vec<String> = rdn
                    .iter()
                    .map(|(t, v)| {
                        let v = normalize_value(v);
                        format!(
                            "{}={}",
                            t.to_ascii_lowercase(),
                            ldap3::dn_escape(v.as_str())
                        )
                    })
                    .collect();
                avas.sort();
                avas.join("+")
            })
            .collect::<Vec<_>>()
            .join(","),
        Err(_) => dn.to_lowercase(),
    }
}

/// One attribute value prepared as RFC 4518 does for a case-ignore match: NFKC, case fold,
/// every Unicode space a plain space, insignificant spaces removed.
fn normalize_value(v: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let folded: String = v.nfkc().collect::<String>().to_lowercase().nfkc().collect();
    folded
        .split(char::is_whitespace)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether two DNs name the same entry (see [`normalize_dn`]).
#[must_use]
pub fn dn_eq(a: &str, b: &str) -> bool {
    normalize_dn(a) == normalize_dn(b)
}

/// Split a DN into its first RDN and its parent, as written (escapes kept).
#[must_use]
pub fn split_rdn(dn: &str) -> (String, String) {
    let bytes = dn.as_bytes();
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        match c {
            b'\\' => i += 2,
            b',' => {
                let rdn = dn.get(..i).unwrap_or(dn);
                let parent = dn.get(i + 1..).unwrap_or("");
                return (trim_spaces(rdn).to_owned(), trim_spaces(parent).to_owned());
            }
            _ => i += 1,
        }
    }
    (trim_spaces(dn).to_owned(), String::new())
}

/// `part` without the ASCII spaces around it (the only ones a DN string may carry there), but
/// never an escaped one (`a\ `) nor other Unicode white space, which are part of the value.
fn trim_spaces(part: &str) -> &str {
    let part = part.trim_start_matches(' ');
    let bytes = part.as_bytes();
    let mut end = bytes.len();
    while end > 0 && bytes.get(end - 1) == Some(&b' ') {
        let backslashes = bytes
            .get(..end - 1)
            .unwrap_or_default()
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 1 {
            break;
        }
        end -= 1;
    }
    part.get(..end).unwrap_or(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rdn_keeps_escaped_and_unicode_spaces_of_the_value() {
        // Found by `properties::dn_escape_then_parse_round_trips` (value "\u{2000}").
        assert_eq!(
            split_rdn("uid=\u{2000},ou=People"),
            ("uid=\u{2000}".to_owned(), "ou=People".to_owned())
        );
        assert_eq!(
            split_rdn(r"uid=a\ , ou=People "),
            (r"uid=a\ ".to_owned(), "ou=People".to_owned())
        );
        assert_eq!(
            split_rdn(r"uid=a\\ ,ou=x"),
            (r"uid=a\\".to_owned(), "ou=x".to_owned())
        );
    }

    #[test]
    fn parses_escapes() {
        let rdns = parse_dn(r"uid=a\,b\2Bc\20,ou=People,dc=example").unwrap();
        assert_eq!(rdns[0][0], ("uid".to_owned(), "a,b+c ".to_owned()));
        assert_eq!(rdns.len(), 3);
        let multi = parse_dn("cn=a+sn=b,dc=x").unwrap();
        assert_eq!(multi[0].len(), 2);
        assert!(parse_dn("").unwrap().is_empty());
        let utf = parse_dn(r"cn=J\C3\BCrgen,dc=x").unwrap();
        assert_eq!(utf[0][0].1, "Jürgen");
    }

    #[test]
    fn rejects_bad_dns() {
        for bad in [
            "uid", "=x", "uid=", "uid=a,", "uid=a\\", "uid=a\\2", "uid=a\"b", "u d=x", "uid=\\ff",
        ] {
            assert!(parse_dn(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn equality_ignores_spelling() {
        assert!(dn_eq(r"UID=A\2cB,OU=People", r"uid=a\,b,ou=people"));
        assert!(dn_eq("cn=x, dc=y", "cn=x,dc=y"));
        assert!(!dn_eq("cn=x,dc=y", "cn=x2,dc=y"));
    }

    #[test]
    fn normal_form_is_how_the_server_compares() {
        // RFC 4518 insignificant spaces: runs inside a value are one space, ends are dropped.
        assert_eq!(
            normalize_dn("cn=Finance  Team,ou=Groups,dc=example,dc=com"),
            normalize_dn("cn=Finance Team,ou=Groups,dc=example,dc=com")
        );
        assert!(dn_eq(r"cn=\20John Smith\20,dc=x", "cn=John   Smith,dc=x"));
        assert!(dn_eq("cn=John\u{a0}Smith,dc=x", "cn=john smith,dc=x"));
        // Case-insensitive types and (case-ignore naming attributes) values.
        assert!(dn_eq(
            "CN=John Smith,OU=People,DC=Example",
            "cn=john smith,ou=people,dc=example"
        ));
        // Escaped forms compare after unescaping: hex, backslash-char, and UTF-8 bytes.
        assert!(dn_eq(r"cn=Smith\2C John,dc=x", r"cn=Smith\, John,dc=x"));
        assert!(dn_eq(r"cn=\4Aohn,dc=x", "cn=John,dc=x"));
        assert!(dn_eq(r"cn=J\C3\BCrgen,dc=x", "cn=Jürgen,dc=x"));
        // NFKC: composed and decomposed spellings are one name.
        assert!(dn_eq("cn=J\u{fc}rgen,dc=x", "cn=Ju\u{308}rgen,dc=x"));
        // Multi-valued RDNs in any order.
        assert!(dn_eq("cn=a+sn=b,dc=x", "SN=B+cn=A,dc=x"));
        // Different names stay different: a space between words is significant.
        assert!(!dn_eq("cn=John Smith,dc=x", "cn=JohnSmith,dc=x"));
        assert!(!dn_eq(
            "cn=John Smith,ou=People,dc=x",
            "cn=John Smith,ou=Groups,dc=x"
        ));
        assert!(!dn_eq(r"cn=a\,b,dc=x", "cn=a,cn=b,dc=x"));
        // The normal form is itself a DN with the same normal form.
        let n = normalize_dn(r"CN=Smith\2C  John ,dc=X");
        assert_eq!(n, r"cn=smith\2c john,dc=x");
        assert_eq!(normalize_dn(&n), n);
    }

    #[test]
    fn split_respects_escapes() {
        assert_eq!(
            split_rdn(r"uid=a\,b,ou=People,dc=x"),
            (r"uid=a\,b".to_owned(), "ou=People,dc=x".to_owned())
        );
        assert_eq!(split_rdn("dc=x"), ("dc=x".to_owned(), String::new()));
        assert_eq!(
            split_rdn(r"cn=a\\,dc=x"),
            (r"cn=a\\".to_owned(), "dc=x".to_owned())
        );
    }
}
