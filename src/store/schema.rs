//! Diesel table definitions for the store (what `diesel print-schema` emits for
//! `migrations/postgres`; the SQLite tree has the same columns). Owned by the store alone: no
//! other module names a table. Change it only together with a new migration in both trees.

diesel::table! {
    audit (id) {
        id -> BigInt,
        at_ms -> BigInt,
        resource_type -> Text,
        resource_id -> Text,
        operation -> Text,
        token_name -> Nullable<Text>,
        request_id -> Nullable<Text>,
        version -> BigInt,
        detail -> Nullable<Text>,
    }
}

diesel::table! {
    group_members (group_seq, member_seq) {
        group_seq -> BigInt,
        member_seq -> BigInt,
        added_seq -> BigInt,
        member_is_group -> Bool,
    }
}

diesel::table! {
    outbox (id) {
        id -> BigInt,
        target -> Text,
        resource_type -> Text,
        resource_id -> Text,
        version -> BigInt,
        operation -> Text,
        request_id -> Nullable<Text>,
        attempts -> Integer,
        next_attempt_ms -> BigInt,
        last_error -> Nullable<Text>,
        state -> Text,
        enqueued_ms -> BigInt,
        claimed_until_ms -> Nullable<BigInt>,
        claim_epoch -> BigInt,
        generation -> BigInt,
        claimed_by -> Nullable<Text>,
    }
}

diesel::table! {
    reference_index (target) {
        target -> Text,
        rules -> Text,
    }
}

diesel::table! {
    resource_emails (resource_seq, value_norm) {
        resource_seq -> BigInt,
        value_norm -> Text,
    }
}

diesel::table! {
    resources (seq) {
        seq -> BigInt,
        id -> Text,
        resource_type -> Text,
        version -> BigInt,
        created_ms -> BigInt,
        modified_ms -> BigInt,
        data -> Text,
        name -> Text,
        name_norm -> Text,
        external_id -> Nullable<Text>,
        active -> Bool,
        password_hash -> Nullable<Text>,
        deleted -> Bool,
        deleted_ms -> Nullable<BigInt>,
    }
}

diesel::table! {
    target_key_reservations (target, key_norm) {
        target -> Text,
        key_norm -> Text,
        resource_id -> Text,
    }
}

diesel::table! {
    target_state (target, resource_id) {
        target -> Text,
        resource_id -> Text,
        resource_type -> Text,
        applied_version -> BigInt,
        target_key -> Nullable<Text>,
        extra -> Nullable<Text>,
        updated_ms -> BigInt,
        key_norm -> Nullable<Text>,
    }
}

diesel::table! {
    user_references (target, holder_id, ref_by, ref_value) {
        target -> Text,
        holder_id -> Text,
        ref_by -> Text,
        ref_value -> Text,
        resolved_id -> Nullable<Text>,
    }
}

diesel::table! {
    tokens (id) {
        id -> BigInt,
        name -> Text,
        sha256 -> Text,
        created_ms -> BigInt,
        last_used_ms -> Nullable<BigInt>,
        revoked_ms -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// Entries each target holds, kept by triggers on `target_state` (O(1) status).
    target_counts (target) {
        target -> Text,
        applied -> BigInt,
    }
}

diesel::table! {
    /// The daemons sharing the store, with their heartbeat (takeover of a dead one's claims).
    instances (id) {
        id -> Text,
        host -> Text,
        version -> Text,
        fingerprint -> Text,
        started_ms -> BigInt,
        heartbeat_ms -> BigInt,
        takeover_ms -> BigInt,
        incarnation -> BigInt,
    }
}

diesel::table! {
    /// Which group versions `member_changes` covers (O(change) memberships).
    member_log (group_seq) {
        group_seq -> BigInt,
        logged_version -> BigInt,
        complete_from -> BigInt,
        pruned_to -> BigInt,
    }
}

diesel::table! {
    /// When each periodic job last ran (one instance at a time, once per interval).
    periodic_jobs (name) {
        name -> Text,
        last_run_ms -> BigInt,
    }
}

diesel::table! {
    /// Members whose membership changed, at the last group version that changed it.
    member_changes (group_seq, member_seq) {
        group_seq -> BigInt,
        member_seq -> BigInt,
        version -> BigInt,
    }
}

diesel::table! {
    /// Members whose rendered value may have changed in a target (key change, flip).
    member_dirty (target, group_id, member_id) {
        target -> Text,
        group_id -> Text,
        member_id -> Text,
        mark -> BigInt,
    }
}

diesel::table! {
    /// Member values we wrote into a group, per target (foreign members).
    target_members (target, group_id, member_value) {
        target -> Text,
        group_id -> Text,
        member_value -> Text,
        member_id -> Text,
        written -> Bool,
    }
}

diesel::joinable!(resource_emails -> resources (resource_seq));

diesel::allow_tables_to_appear_in_same_query!(
    audit,
    group_members,
    instances,
    member_changes,
    member_dirty,
    member_log,
    outbox,
    periodic_jobs,
    reference_index,
    resource_emails,
    resources,
    target_counts,
    target_key_reservations,
    target_members,
    target_state,
    tokens,
    user_references,
);
