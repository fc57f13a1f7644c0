DROP TABLE target_members;
DROP TABLE member_dirty;
DROP TABLE member_changes;
DROP TABLE member_log;
