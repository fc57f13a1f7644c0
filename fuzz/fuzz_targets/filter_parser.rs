//! Filter parser and evaluator: any text either parses within the limits or is a 400
//! `invalidFilter`; a parsed filter evaluates on a user without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scim_sync::scim::filter::{parse_filter, FilterLimits};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_filter(text, FilterLimits::default()) {
        Ok(f) => {
            let user = serde_json::json!({"userName": "a", "emails": [{"value": "a@b", "type": "work"}], "active": true, "meta": {"lastModified": "2024-01-01T00:00:00Z"}});
            let _ = f.matches(&user);
            let _ = f.equality_lookups();
        }
        Err(e) => assert_eq!((e.status, e.scim_type.map(|t| t.as_str())), (400, Some("invalidFilter")), "{text:?}"),
    }
});
