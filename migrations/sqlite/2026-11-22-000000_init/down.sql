DROP TABLE audit;
DROP TABLE tokens;
DROP TABLE target_state;
DROP TABLE outbox;
DROP TABLE group_members;
DROP TABLE resource_emails;
DROP TABLE resources;
