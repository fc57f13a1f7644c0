//! PATCH path parser: any text parses or is a 400 with a scimType.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scim_sync::scim::path::parse_path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = parse_path(text) {
        assert_eq!(e.status, 400, "{text:?}");
        assert!(e.scim_type.is_some(), "{text:?}");
    }
});
