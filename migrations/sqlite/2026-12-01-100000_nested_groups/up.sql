-- Nested groups (issue 11): a group's member may be a group. member_is_group says which
-- members are groups (the member resource's type, kept on the row so that the walks over
-- group-in-group edges, the cycle check and a group's ancestors, read only those edges:
-- O(nested edges), never a group's user members). See docs/ARCHITECTURE.md, "Nested groups".
ALTER TABLE group_members ADD COLUMN member_is_group BOOLEAN NOT NULL DEFAULT FALSE;
-- A group's child groups (the cycle check walks down, a flattening apply reads the closure).
CREATE INDEX group_members_child_groups ON group_members (group_seq, member_seq) WHERE member_is_group;
-- A group's parent groups (a change reaches every ancestor).
CREATE INDEX group_members_parent_groups ON group_members (member_seq, group_seq) WHERE member_is_group;
