DROP TABLE held_requests;
DROP TYPE held_status;
DROP TABLE blocked_values;
DROP TABLE identity_events;
DROP TYPE identity_event_kind;
