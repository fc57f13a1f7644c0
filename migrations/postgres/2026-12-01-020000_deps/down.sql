DROP TABLE reference_index;
DROP TABLE user_references;
