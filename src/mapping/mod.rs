//! The attribute-mapping engine (pure): compiles the `[[targets]]` attribute rules from the
//! config and renders a SCIM resource into a target entry, then diffs it against what the target
//! holds. Must not do I/O.
