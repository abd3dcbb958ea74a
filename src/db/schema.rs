// @generated automatically by Diesel CLI.

pub mod sql_types {
    #[derive(diesel::query_builder::QueryId, Clone, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "link_precedence"))]
    pub struct LinkPrecedence;
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

diesel::allow_tables_to_appear_in_same_query!(api_keys, contacts,);
