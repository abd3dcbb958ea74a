// @generated automatically by Diesel CLI.

pub mod sql_types {
    #[derive(diesel::query_builder::QueryId, Clone, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "held_status"))]
    pub struct HeldStatus;

    #[derive(diesel::query_builder::QueryId, Clone, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "identity_event_kind"))]
    pub struct IdentityEventKind;

    #[derive(diesel::query_builder::QueryId, Clone, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "link_precedence"))]
    pub struct LinkPrecedence;

    #[derive(diesel::query_builder::QueryId, Clone, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "xid8", schema = "pg_catalog"))]
    pub struct Xid8;
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        name -> Text,
        scopes -> Array<Nullable<Text>>,
        secret_sha256 -> Text,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    blocked_values (kind, value) {
        kind -> Text,
        value -> Text,
        reason -> Text,
        blocked_by -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::LinkPrecedence;

    contacts (id) {
        id -> Int4,
        phone_number -> Nullable<Text>,
        email -> Nullable<Text>,
        linked_id -> Nullable<Int4>,
        link_precedence -> LinkPrecedence,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    erasure_key (singleton) {
        singleton -> Bool,
        key -> Bytea,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    erasures (id) {
        id -> Int8,
        primary_id -> Nullable<Int4>,
        contact_ids -> Array<Nullable<Int4>>,
        value_hashes -> Array<Nullable<Text>>,
        erased_by -> Text,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::HeldStatus;

    held_requests (id) {
        id -> Int8,
        email -> Nullable<Text>,
        phone_number -> Nullable<Text>,
        primary_ids -> Array<Nullable<Int4>>,
        limit_kind -> Text,
        suspect_kind -> Text,
        suspect_value -> Text,
        status -> HeldStatus,
        times_seen -> Int4,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
        last_seen_at -> Timestamptz,
        resolved_at -> Nullable<Timestamptz>,
        resolved_by -> Nullable<Text>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::Xid8;

    identity_changes (id) {
        id -> Int8,
        xid -> Xid8,
        kind -> Text,
        primary_ids -> Array<Nullable<Int4>>,
        contact_ids -> Array<Nullable<Int4>>,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::Xid8;

    identity_changes_pruned (singleton) {
        singleton -> Bool,
        xid -> Xid8,
        id -> Int8,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::IdentityEventKind;

    identity_events (id) {
        id -> Int8,
        kind -> IdentityEventKind,
        contact_id -> Nullable<Int4>,
        primary_id -> Nullable<Int4>,
        from_primary_id -> Nullable<Int4>,
        email -> Nullable<Text>,
        phone_number -> Nullable<Text>,
        contact_ids -> Nullable<Array<Nullable<Int4>>>,
        held_id -> Nullable<Int8>,
        request_id -> Nullable<Text>,
        pre_ledger -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    imports (id) {
        id -> Int8,
        fingerprint -> Text,
        source -> Text,
        format -> Text,
        lines_done -> Int8,
        bytes_done -> Int8,
        prefix_sha256 -> Text,
        orders_read -> Int8,
        orders_applied -> Int8,
        orders_rejected -> Int8,
        identities_created -> Int8,
        merges -> Int8,
        held -> Int8,
        last_ordered_at -> Nullable<Timestamptz>,
        sequences -> Array<Nullable<Int8>>,
        started_at -> Timestamptz,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    blocked_values,
    contacts,
    erasure_key,
    erasures,
    held_requests,
    identity_changes,
    identity_changes_pruned,
    identity_events,
    imports,
);
