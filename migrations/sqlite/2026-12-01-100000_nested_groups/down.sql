DROP INDEX group_members_parent_groups;
DROP INDEX group_members_child_groups;
ALTER TABLE group_members DROP COLUMN member_is_group;
