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

/// A normal form for equality: types lower-cased, values unescaped, case-folded and
/// re-escaped. Naming attributes are nearly always case-insensitive, so case-only changes are
/// not renames. Falls back to the lower-cased input for an unparsable DN.
#[must_use]
pub fn normalize_dn(dn: &str) -> String {
    match parse_dn(dn) {
        Ok(rdns) => rdns
            .iter()
            .map(|rdn| {
                let mut avas: Vec<String> = rdn
                    .iter()
                    .map(|(t, v)| {
                        let v = v.trim().to_lowercase();
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
                return (rdn.trim().to_owned(), parent.trim().to_owned());
            }
            _ => i += 1,
        }
    }
    (dn.trim().to_owned(), String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

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
