//! Mapping template and path parser: any text parses or is an error message; parsing is
//! deterministic and a parsed path evaluates without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scim_sync::mapping::path::Path;
use scim_sync::mapping::Template;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Template::parse(text) {
        // Parsing is deterministic: the same text gives the same template.
        assert_eq!(Template::parse(text).ok(), Some(t));
    }
    if let Ok(p) = Path::parse(text) {
        let _ = p.eval(&serde_json::json!({"userName": "a", "name": {"givenName": "b"}, "emails": [{"value": "c", "primary": true}]}));
    }
});
