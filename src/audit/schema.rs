//! Table definitions for diesel's query builder, kept in step with
//! `migrations/` by hand (no diesel CLI needed anywhere).

diesel::table! {
    session_events (tenant, session_id, epoch, version) {
        tenant -> Text,
        session_id -> Text,
        epoch -> Text,
        version -> Int8,
        event_type -> Text,
        participant_id -> Nullable<Text>,
        occurred_at -> Timestamptz,
        snapshot -> Jsonb,
        inserted_at -> Timestamptz,
        lag_asked_us -> Nullable<Int8>,
        lag_given_us -> Nullable<Int8>,
    }
}

diesel::table! {
    sessions (tenant, session_id) {
        tenant -> Text,
        session_id -> Text,
        epoch -> Text,
        mode -> Text,
        status -> Text,
        last_version -> Int8,
        config -> Jsonb,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        ended_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    audit_dead_letters (id) {
        id -> Int8,
        tenant -> Text,
        session_id -> Text,
        epoch -> Text,
        version -> Int8,
        reason -> Text,
        event -> Bytea,
        refused_at -> Timestamptz,
    }
}
