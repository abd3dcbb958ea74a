DROP TABLE identity_changes_pruned;
DROP TABLE identity_changes;
